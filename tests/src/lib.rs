//! Harness for rigfleet's end-to-end tests (servers, agents and pools over real sockets). The
//! tests themselves live in `tests/tests/`, one integration binary.
