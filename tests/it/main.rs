mod hook;
mod host_model;
mod qmp;
mod wrapper;
