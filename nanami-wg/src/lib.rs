//! Nanami data plane and Linux platform (not built yet).
