//! Spillway ingester (in progress).
