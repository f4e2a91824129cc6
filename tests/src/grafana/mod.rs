//! Grafana, where it cannot run here: what its code and the ClickHouse
//! plugin's code do with Spillway's provisioned alert rules and dashboards,
//! followed field by field from their source and cited per module. Each
//! model fails where the component would fail, and is stricter where the
//! component is silent (an unknown key is an error).

pub mod alerting;
pub mod dashboard;
pub mod plugin;
