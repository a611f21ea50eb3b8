//! Nanami reconciler: `plan(desired, observed)` and the controller loop (not built yet).
