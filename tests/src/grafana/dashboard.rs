//! A provisioned dashboard as Grafana 12.2 and the ClickHouse plugin
//! (v4.20.0) run it:
//!
//! - each target's `rawSql` goes through Grafana's template service
//!   (`applyTemplateVariables` in the plugin's `src/data/CHDatasource.ts`
//!   calls `getTemplateSrv().replace(rawSql, scopedVars, format)`; `format`
//!   leaves a single value as it is). The template service replaces
//!   `$name`, `${name}`, `${name:format}` and `[[name]]` for dashboard
//!   variables and the global `__from` / `__to` (`:date:seconds` is Unix
//!   seconds, no format milliseconds), and leaves every other name, such as
//!   the plugin's `$__timeFilter`, in place;
//! - the plugin's backend then expands its macros ([`super::plugin`]);
//! - a query variable runs its SQL the same way (`CHVariableSupport.query`
//!   -> `metricFindQuery`): one column gives options whose text and value
//!   are that column; two or more, values from the first and texts from the
//!   second. The current value is kept when it is still an option, else the
//!   first option is taken.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value as Json;

use super::plugin::{Frame, TimeRange, ensure_no_reference, expand_macros};

/// Grafana's global variables that the template service itself replaces.
const GLOBALS: [&str; 2] = ["__from", "__to"];

/// A dashboard file.
#[derive(Debug, Clone)]
pub struct Dashboard {
    json: Json,
}

/// One query of a panel.
#[derive(Debug, Clone)]
pub struct Target {
    /// Panel title.
    pub panel: String,
    /// The SQL as written.
    pub sql: String,
}

/// One dashboard variable.
#[derive(Debug, Clone)]
pub struct Variable {
    /// Name, as referenced.
    pub name: String,
    /// Its SQL.
    pub sql: String,
    /// Hidden from the dashboard's controls (`hide: 2`).
    pub hidden: bool,
}

impl Dashboard {
    /// Parses a dashboard and checks every panel target and variable field
    /// by field, with the provisioned data source uids.
    pub fn parse(text: &str, datasources: &BTreeSet<String>) -> Result<Self> {
        let json: Json = serde_json::from_str(text).context("dashboard is not JSON")?;
        let d = Dashboard { json };
        let names: BTreeSet<String> = d.variables()?.into_iter().map(|v| v.name).collect();
        let check_datasource = |ds: &Json, what: &str| -> Result<()> {
            ensure!(
                ds["type"] == "grafana-clickhouse-datasource",
                "{what}: data source type {} is not the ClickHouse plugin",
                ds["type"]
            );
            let uid = ds["uid"]
                .as_str()
                .context(format!("{what}: no data source uid"))?;
            ensure!(
                datasources.contains(uid),
                "{what}: no provisioned data source `{uid}`"
            );
            Ok(())
        };
        for v in d.json["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let what = format!("variable {}", v["name"]);
            ensure!(
                v["type"] == "query",
                "{what}: only query variables are modelled"
            );
            check_datasource(&v["datasource"], &what)?;
            // `refresh`: 1 on load, 2 on time range change; a variable that
            // reads the range must refresh with it.
            let sql = variable_sql(v).context(what.clone())?;
            let reads_range = sql.contains("__from") || sql.contains("__to") || sql.contains("$__");
            ensure!(
                !reads_range || v["refresh"] == 2,
                "{what} reads the time range but does not refresh on time range change (refresh: 2)"
            );
            check_references(&sql, &names, &what)?;
        }
        for t in d.targets()? {
            check_references(&t.sql, &names, &format!("panel `{}`", t.panel))?;
        }
        for p in d.panels() {
            let title = p["title"].as_str().unwrap_or("?");
            for t in p["targets"].as_array().into_iter().flatten() {
                let what = format!("panel `{title}` target {}", t["refId"]);
                check_datasource(&t["datasource"], &what)?;
                ensure!(t["editorType"] == "sql", "{what}: editorType is not sql");
                let format = t["format"].as_i64().context(format!("{what}: no format"))?;
                let query_type = t["queryType"].as_str().unwrap_or_default();
                // sqlutil formats: 0 time series, 1 table.
                ensure!(
                    (format == 0 && query_type == "timeseries")
                        || (format == 1 && query_type == "table"),
                    "{what}: format {format} with queryType `{query_type}`"
                );
            }
        }
        Ok(d)
    }

    fn panels(&self) -> impl Iterator<Item = &Json> {
        self.json["panels"].as_array().into_iter().flatten()
    }

    /// Every panel's title.
    pub fn panel_titles(&self) -> Vec<String> {
        self.panels()
            .filter_map(|p| p["title"].as_str().map(str::to_owned))
            .collect()
    }

    /// Every panel target's SQL.
    pub fn targets(&self) -> Result<Vec<Target>> {
        let mut out = Vec::new();
        for p in self.panels() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push(Target {
                    panel: p["title"].as_str().unwrap_or("?").to_owned(),
                    sql: t["rawSql"]
                        .as_str()
                        .context("target without rawSql")?
                        .to_owned(),
                });
            }
        }
        Ok(out)
    }

    /// The variables, in the order Grafana resolves them.
    pub fn variables(&self) -> Result<Vec<Variable>> {
        self.json["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| {
                Ok(Variable {
                    name: v["name"]
                        .as_str()
                        .context("variable without name")?
                        .to_owned(),
                    sql: variable_sql(v)?,
                    hidden: v["hide"] == 2,
                })
            })
            .collect()
    }

    /// Resolves every variable for `range` as Grafana does, running each
    /// variable's query with `run`; `chosen` holds what a user picked.
    pub async fn resolve<F, Fut>(
        &self,
        range: TimeRange,
        chosen: &BTreeMap<String, String>,
        mut run: F,
    ) -> Result<BTreeMap<String, String>>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<Frame>>,
    {
        let mut values = BTreeMap::new();
        for v in self.variables()? {
            let sql = self.expand(&v.sql, &values, range)?;
            let frame = run(sql)
                .await
                .with_context(|| format!("variable {}", v.name))?;
            // The value is the first column, whether or not a second one
            // gives the text.
            let options: Vec<String> = frame
                .rows
                .iter()
                .map(|r| r[0].clone().unwrap_or_default())
                .collect();
            let value = match chosen.get(&v.name) {
                Some(c) if options.contains(c) => c.clone(),
                _ => options
                    .first()
                    .with_context(|| format!("variable {} has no options", v.name))?
                    .clone(),
            };
            values.insert(v.name, value);
        }
        Ok(values)
    }

    /// `sql` as ClickHouse receives it: template service, then macros.
    pub fn expand(
        &self,
        sql: &str,
        values: &BTreeMap<String, String>,
        range: TimeRange,
    ) -> Result<String> {
        let replaced = template_replace(sql, values, range)?;
        let expanded = expand_macros(&replaced, range)?;
        ensure_no_reference(&expanded, "dashboard SQL")?;
        Ok(expanded)
    }
}

/// A query variable's SQL: the plugin's `CHVariableQuery.rawSql`, or a
/// legacy plain string.
fn variable_sql(v: &Json) -> Result<String> {
    match &v["query"] {
        Json::String(s) => Ok(s.clone()),
        q @ Json::Object(_) => {
            ensure!(
                matches!(q["queryType"].as_str(), Some("sql") | None),
                "only Custom SQL variable queries are modelled"
            );
            Ok(q["rawSql"]
                .as_str()
                .context("variable query without rawSql")?
                .to_owned())
        }
        other => bail!("variable query {other}"),
    }
}

/// One `$` reference in SQL: its name and format, and where it spans.
struct Reference {
    start: usize,
    end: usize,
    name: String,
    format: Option<String>,
}

/// Grafana's variable syntax (`variableRegex` in public/app/features/variables/utils.ts):
/// `$name`, `[[name]]`, `[[name:format]]`, `${name}`, `${name:format}`.
fn references(text: &str) -> Vec<Reference> {
    let word = |s: &str| -> usize {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .count()
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let braced = [("${", "}"), ("[[", "]]")]
            .into_iter()
            .find_map(|(open, close)| {
                let inner = rest.strip_prefix(open)?;
                let end = inner.find(close)?;
                let body = &inner[..end];
                let (name, format) = match body.split_once(':') {
                    Some((n, f)) => (n, Some(f.to_owned())),
                    None => (body, None),
                };
                Some(Reference {
                    start: i,
                    end: i + open.len() + end + close.len(),
                    name: name.to_owned(),
                    format,
                })
            });
        if let Some(r) = braced {
            i = r.end;
            out.push(r);
            continue;
        }
        if let Some(inner) = rest.strip_prefix('$') {
            let n = word(inner);
            if n > 0 {
                out.push(Reference {
                    start: i,
                    end: i + 1 + n,
                    name: inner[..n].to_owned(),
                    format: None,
                });
                i += 1 + n;
                continue;
            }
        }
        i += rest.chars().next().map_or(1, char::len_utf8);
    }
    out
}

/// Every reference must be a dashboard variable, a global the template
/// service replaces, or a plugin macro (`$__name`), else it reaches ClickHouse.
fn check_references(sql: &str, variables: &BTreeSet<String>, what: &str) -> Result<()> {
    for r in references(sql) {
        let ok = variables.contains(&r.name)
            || GLOBALS.contains(&r.name.as_str())
            || (r.name.starts_with("__") && sql[r.start..].starts_with("$__"));
        ensure!(
            ok,
            "{what}: `{}` is no variable of the dashboard",
            &sql[r.start..r.end]
        );
    }
    Ok(())
}

/// `templateSrv.replace` with the plugin's formatter, for a range.
pub fn template_replace(
    sql: &str,
    values: &BTreeMap<String, String>,
    range: TimeRange,
) -> Result<String> {
    let mut out = String::with_capacity(sql.len());
    let mut last = 0;
    for r in references(sql) {
        out.push_str(&sql[last..r.start]);
        last = r.end;
        let value = if let Some(v) = values.get(&r.name) {
            ensure!(
                r.format.as_deref().is_none_or(|f| f == "raw"),
                "format `{:?}` of ${} is not modelled",
                r.format,
                r.name
            );
            v.clone()
        } else if GLOBALS.contains(&r.name.as_str()) {
            let secs = if r.name == "__from" {
                range.from
            } else {
                range.to
            };
            match r.format.as_deref() {
                None => (secs * 1000).to_string(),
                Some("date:seconds") => secs.to_string(),
                Some(other) => bail!("format `{other}` of ${} is not modelled", r.name),
            }
        } else {
            // Not a variable: left for the plugin (macros) or ClickHouse.
            sql[r.start..r.end].to_owned()
        };
        out.push_str(&value);
    }
    out.push_str(&sql[last..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_service_replaces_variables_and_globals_only() -> Result<()> {
        let values = [("tier".to_owned(), "samples_1m_all".to_owned())].into();
        let range = TimeRange { from: 10, to: 20 };
        assert_eq!(
            template_replace(
                "FROM $tier WHERE ${__from:date:seconds} < ${__to} AND $__timeFilter(time) AND [[tier]]",
                &values,
                range
            )?,
            "FROM samples_1m_all WHERE 10 < 20000 AND $__timeFilter(time) AND samples_1m_all"
        );
        assert!(check_references("SELECT $nosuch", &BTreeSet::new(), "q").is_err());
        assert!(check_references("SELECT ${SPILLWAY_X}", &BTreeSet::new(), "q").is_err());
        assert!(check_references("WHERE $__timeFilter(t)", &BTreeSet::new(), "q").is_ok());
        Ok(())
    }
}
