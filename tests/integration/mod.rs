//! Integration tests of the facade crate on the CPU backend.

mod backend;
mod backend_suite;
mod common;
mod costs;
mod deit3;
#[cfg(feature = "app")]
mod demo;
mod enumeration;
mod forward;
mod import;
mod least_squares;
mod levit;
mod limits;
mod resnet;
mod route_pack;
mod stitch_seam;
mod swin;
mod two_way;
mod weights;
