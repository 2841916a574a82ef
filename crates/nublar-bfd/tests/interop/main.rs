//! Interoperability with real BFD routers (FRRouting's bfdd, BIRD 2), each in network
//! namespaces its test creates. A binary of their own, apart from `tests/it`: their sessions
//! run on detection times of a few hundred milliseconds, which the CPU-heavy property tests
//! beside them would stretch; and the two take turns, for the same reason.

mod lab;

mod bird;
mod frr;
