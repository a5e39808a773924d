mod e2e;
mod hook;
mod host_model;
mod installer;
mod qmp;
mod rpm;
mod wrapper;
