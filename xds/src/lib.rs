pub mod well_known;
