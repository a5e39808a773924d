mod hook;
mod qmp;
mod wrapper;
