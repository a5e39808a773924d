mod e2e;
mod hook;
mod host_model;
mod installer;
mod prometheus;
mod qmp;
mod rpm;
mod wrapper;
