mod qmp;
mod wrapper;
