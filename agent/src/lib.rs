//! Spillway agent (in progress).
