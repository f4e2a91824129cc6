//! Grafana's alert rule provisioning and server-side expressions, followed
//! from grafana/grafana's source (Grafana 12.2, the version
//! docker-compose.yml runs), field by field:
//!
//! - the file: `AlertRuleGroupV1`, `AlertRuleV1` and `QueryV1` in
//!   `pkg/services/provisioning/alerting/rules_types.go`. Fields typed
//!   `values.StringValue` / `StringMapValue` go through the environment
//!   (`interpolateValue` in `pkg/services/provisioning/values/values.go`:
//!   `$$` is a `$`, the rest `os.ExpandEnv`); a query's `model` is taken
//!   raw (`QueryV1.mapToModel` marshals `Model.Raw`), so nothing in it is
//!   replaced; annotations are not interpolated in 12.2 (provisioning docs,
//!   "Template variable interpolation") and only braced variables are in
//!   later versions (`ValueWithBracedVars`), so a `$` there is rejected;
//! - a table result becomes one number per row, its string columns the
//!   labels, only when it has exactly one numeric column and no column of
//!   another type (`isNumberTable`, `extractNumberSet` in
//!   `pkg/expr/converter.go`);
//! - `reduce` (`pkg/expr/commands.go`: on numbers a no-op, `dropNN` drops
//!   null, NaN and Inf; reducers from `mathexp.GetReduceFunc`), `threshold`
//!   (`pkg/expr/threshold.go`: one condition, `gt`, `lt`, `within_range`,
//!   `outside_range`), `math` (`pkg/expr/mathexp/parse/lex.go`: a `$` must
//!   be followed by a name or `{name}`, else "incomplete variable");
//! - the condition: each number is an alert instance, firing when non-zero,
//!   no data when null or when there are no numbers; two instances with the
//!   same labels are an error.
//!
//! Stricter than Grafana in one way: an unknown key is an error here, where
//! Grafana's YAML decoding ignores it (a misspelt `for` would be lost).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use serde_json::Value as Json;

use super::plugin::{FieldKind, Frame, Labels, TimeRange, ensure_no_reference, expand_macros};

/// The data source uid of server-side expressions.
const EXPRESSIONS: &str = "__expr__";

/// A provisioning file under `provisioning/alerting/`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AlertingFile {
    /// Always 1.
    pub api_version: i64,
    /// Rule groups.
    #[serde(default)]
    pub groups: Vec<RuleGroup>,
    /// Contact points (settings interpolated; not evaluated here).
    #[serde(default)]
    pub contact_points: Vec<serde_norway::Value>,
    /// Notification policies (not evaluated here).
    #[serde(default)]
    pub policies: Vec<serde_norway::Value>,
}

/// `AlertRuleGroupV1`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleGroup {
    /// Organization.
    pub org_id: i64,
    /// Group name.
    pub name: String,
    /// Folder title.
    pub folder: String,
    /// Evaluation interval.
    pub interval: String,
    /// The rules.
    pub rules: Vec<RuleV1>,
}

/// `AlertRuleV1`, as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleV1 {
    /// Stable id.
    pub uid: String,
    /// Name shown in Grafana.
    pub title: String,
    /// The refId whose result decides.
    pub condition: String,
    /// Queries and expressions.
    pub data: Vec<QueryV1>,
    /// How long the condition must hold.
    #[serde(default, rename = "for")]
    pub for_: Option<String>,
    /// State when the condition has no data.
    #[serde(default)]
    pub no_data_state: Option<String>,
    /// State when evaluation fails.
    #[serde(default)]
    pub exec_err_state: Option<String>,
    /// Templated texts (not interpolated).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Labels (interpolated).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Paused.
    #[serde(default)]
    pub is_paused: Option<bool>,
}

/// `QueryV1`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct QueryV1 {
    /// Name other expressions refer to.
    pub ref_id: String,
    /// Data source, or `__expr__`.
    pub datasource_uid: String,
    /// Seconds before now: the query's range.
    #[serde(default)]
    pub relative_time_range: Option<RelativeTimeRange>,
    /// Taken raw, never interpolated.
    pub model: Json,
    /// Query type (interpolated).
    #[serde(default)]
    pub query_type: Option<String>,
}

/// `models.RelativeTimeRange`, in seconds.
#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct RelativeTimeRange {
    /// Start, seconds before now.
    pub from: u64,
    /// End, seconds before now.
    pub to: u64,
}

/// `interpolateValue`: split at `$$`, expand each part as `os.ExpandEnv`
/// does, join with `$`.
pub fn interpolate(value: &str, env: &BTreeMap<String, String>) -> String {
    value
        .split("$$")
        .map(|part| expand_env(part, env))
        .collect::<Vec<_>>()
        .join("$")
}

/// Go's `os.Expand`: `${name}` and `$name`; an unset name is empty; a `$`
/// followed by neither stays.
fn expand_env(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(inner) = after.strip_prefix('{') {
            if let Some(end) = inner.find('}') {
                out.push_str(env.get(&inner[..end]).map_or("", String::as_str));
                rest = &inner[end + 1..];
            } else {
                // Bad syntax: Go eats the `${`.
                rest = inner;
            }
            continue;
        }
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            out.push('$');
            rest = after;
        } else {
            out.push_str(env.get(&name).map_or("", String::as_str));
            rest = &after[name.len()..];
        }
    }
    out.push_str(rest);
    out
}

/// Prometheus's `model.ParseDuration`, which Grafana uses for `for` and
/// `interval`: `1h30m`, `10s`, `0`; in seconds.
pub fn parse_duration(text: &str) -> Result<u64> {
    if text == "0" {
        return Ok(0);
    }
    ensure!(!text.is_empty(), "empty duration");
    let units = [
        ("y", 365 * 86400),
        ("w", 7 * 86400),
        ("d", 86400),
        ("h", 3600),
        ("ms", 0),
        ("m", 60),
        ("s", 1),
    ];
    let mut rest = text;
    let mut total = 0;
    let mut last_unit = 0;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        ensure!(digits > 0, "not a duration: `{text}`");
        let n: u64 = rest[..digits].parse()?;
        rest = &rest[digits..];
        let (i, (unit, secs)) = units
            .iter()
            .enumerate()
            .find(|(_, (u, _))| rest.starts_with(u))
            .with_context(|| format!("not a duration: `{text}`"))?;
        ensure!(i >= last_unit, "units out of order in `{text}`");
        last_unit = i + 1;
        rest = &rest[unit.len()..];
        total += n * secs;
    }
    Ok(total)
}

/// A rule as Grafana stores it after provisioning.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Group name.
    pub group: String,
    /// Rule title.
    pub title: String,
    /// Condition refId.
    pub condition: String,
    /// `for`, seconds.
    pub for_secs: u64,
    /// `noDataState`.
    pub no_data_state: String,
    /// Labels after interpolation.
    pub labels: BTreeMap<String, String>,
    /// Data source queries: refId, data source uid, SQL as written, range.
    pub queries: Vec<(String, String, String, RelativeTimeRange)>,
    /// Expressions by refId.
    pub expressions: BTreeMap<String, Expression>,
}

/// A server-side expression.
#[derive(Debug, Clone)]
pub enum Expression {
    /// `reduce`.
    Reduce {
        /// Input refId.
        input: String,
        /// `mean`, `last`...
        reducer: String,
        /// `dropNN`: drop null, NaN, Inf.
        drop_non_numbers: bool,
        /// `replaceNN` value.
        replace_non_numbers: Option<f64>,
    },
    /// `threshold`.
    Threshold {
        /// Input refId.
        input: String,
        /// `gt`, `lt`, ...
        kind: String,
        /// Its parameters.
        params: Vec<f64>,
    },
    /// `math`.
    Math(MathExpr),
}

/// Reads a provisioning file as Grafana does and returns its rules, or
/// every problem Grafana would meet loading or evaluating them.
pub fn read_rules(
    yaml: &str,
    env: &BTreeMap<String, String>,
    datasources: &BTreeSet<String>,
) -> Result<Vec<Rule>> {
    let file: AlertingFile = serde_norway::from_str(yaml).context("not a Grafana alerting file")?;
    ensure!(
        file.api_version == 1,
        "apiVersion {} is not 1",
        file.api_version
    );
    let mut rules = Vec::new();
    let mut problems = Vec::new();
    for group in &file.groups {
        let name = interpolate(&group.name, env);
        ensure!(!name.trim().is_empty(), "rule group has no name set");
        ensure!(
            !interpolate(&group.folder, env).trim().is_empty(),
            "rule group has no folder set"
        );
        let interval = parse_duration(&interpolate(&group.interval, env))
            .with_context(|| format!("group `{name}` interval"))?;
        // ngalert's base interval ([unified_alerting] base_interval, 10 s).
        ensure!(
            interval > 0 && interval % 10 == 0,
            "group `{name}`: interval {interval} s is not a multiple of 10 s"
        );
        ensure!(group.org_id >= 1, "group `{name}`: orgId {}", group.org_id);
        for rule in &group.rules {
            match read_rule(&name, rule, env, datasources) {
                Ok(r) => rules.push(r),
                Err(e) => problems.push(format!("{e:#}")),
            }
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(rules)
}

fn read_rule(
    group: &str,
    rule: &RuleV1,
    env: &BTreeMap<String, String>,
    datasources: &BTreeSet<String>,
) -> Result<Rule> {
    let title = interpolate(&rule.title, env);
    ensure!(!title.is_empty(), "rule has no title set");
    let ctx = |what: &str| format!("rule `{title}`: {what}");
    ensure!(
        !interpolate(&rule.uid, env).is_empty(),
        ctx("failed to parse: no UID set")
    );
    let for_secs = match rule.for_.as_deref().map(|f| interpolate(f, env)) {
        Some(f) if !f.is_empty() => parse_duration(&f).with_context(|| ctx("`for`"))?,
        _ => 0,
    };
    let check_state = |v: &Option<String>, allowed: &[&str], field: &str| -> Result<String> {
        let v = v
            .as_deref()
            .map(|s| interpolate(s, env))
            .unwrap_or_default();
        ensure!(
            v.is_empty() || allowed.contains(&v.trim()),
            ctx(&format!("{field} `{v}` is not one of {allowed:?}"))
        );
        Ok(v.trim().to_owned())
    };
    check_state(
        &rule.exec_err_state,
        &["Alerting", "Error", "OK", "KeepLast"],
        "execErrState",
    )?;
    let no_data_state = check_state(
        &rule.no_data_state,
        &["Alerting", "NoData", "OK", "KeepLast"],
        "noDataState",
    )?;
    let labels = rule
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), interpolate(v, env)))
        .collect();
    ensure!(!rule.data.is_empty(), ctx("failed to parse: no data set"));
    let mut queries = Vec::new();
    let mut expressions = BTreeMap::new();
    for q in &rule.data {
        let ref_id = interpolate(&q.ref_id, env);
        let uid = interpolate(&q.datasource_uid, env);
        let model = &q.model;
        if let Some(model_ref) = model.get("refId").and_then(Json::as_str) {
            ensure!(
                model_ref == ref_id,
                ctx(&format!("model refId `{model_ref}` is not `{ref_id}`"))
            );
        }
        if uid == EXPRESSIONS {
            let e = read_expression(model).with_context(|| ctx(&format!("expression {ref_id}")))?;
            expressions.insert(ref_id, e);
            continue;
        }
        ensure!(
            datasources.contains(&uid),
            ctx(&format!(
                "query {ref_id}: no provisioned data source `{uid}`"
            ))
        );
        let range = q
            .relative_time_range
            .with_context(|| ctx(&format!("query {ref_id} has no relativeTimeRange")))?;
        ensure!(
            range.from > range.to,
            ctx(&format!(
                "query {ref_id}: relativeTimeRange from must be before to"
            ))
        );
        // The plugin's query model (sqlutil.Query: rawSql, format).
        let sql = model
            .get("rawSql")
            .and_then(Json::as_str)
            .with_context(|| ctx(&format!("query {ref_id}: model has no rawSql")))?;
        ensure!(
            matches!(
                model.get("editorType").and_then(Json::as_str),
                Some("sql") | None
            ),
            ctx(&format!("query {ref_id}: editorType is not sql"))
        );
        ensure!(
            model.get("format").and_then(Json::as_i64) == Some(1),
            ctx(&format!(
                "query {ref_id}: format is not 1 (table): rows become numbers only from a table"
            ))
        );
        // Nothing is interpolated in a model: only the plugin's macros may
        // remain, and they must expand to plain SQL.
        let probe = expand_macros(sql, TimeRange { from: 0, to: 1 })?;
        ensure_no_reference(&probe, &ctx(&format!("query {ref_id} rawSql")))?;
        queries.push((ref_id, uid, sql.to_owned(), range));
    }
    for (key, text) in &rule.annotations {
        ensure_no_reference(text, &ctx(&format!("annotation `{key}`")))?;
    }
    let condition = interpolate(&rule.condition, env);
    ensure!(
        !condition.is_empty(),
        ctx("failed to parse: no condition set")
    );
    let known: BTreeSet<&String> = queries
        .iter()
        .map(|(r, ..)| r)
        .chain(expressions.keys())
        .collect();
    ensure!(
        known.contains(&condition),
        ctx(&format!(
            "condition `{condition}` is not a refId of its data"
        ))
    );
    for (ref_id, e) in &expressions {
        for input in e.inputs() {
            ensure!(
                known.contains(&input),
                ctx(&format!(
                    "{ref_id}: unable to find dependent node `{input}`"
                ))
            );
        }
    }
    Ok(Rule {
        group: group.to_owned(),
        title,
        condition,
        for_secs,
        no_data_state,
        labels,
        queries,
        expressions,
    })
}

fn read_expression(model: &Json) -> Result<Expression> {
    let kind = model
        .get("type")
        .and_then(Json::as_str)
        .context("no type")?;
    let input = || -> Result<String> {
        let e = model
            .get("expression")
            .and_then(Json::as_str)
            .context("no expression")?;
        Ok(e.trim_start_matches('$').to_owned())
    };
    match kind {
        "reduce" => {
            let reducer = model
                .get("reducer")
                .and_then(Json::as_str)
                .context("no reducer specified")?
                .to_lowercase();
            ensure!(
                ["sum", "mean", "min", "max", "count", "last"].contains(&reducer.as_str()),
                "reduction {reducer} not implemented"
            );
            let settings = model.get("settings");
            let mode = settings
                .and_then(|s| s.get("mode"))
                .and_then(Json::as_str)
                .unwrap_or("");
            let replace = match mode {
                "" | "dropNN" => None,
                "replaceNN" => Some(
                    settings
                        .and_then(|s| s.get("replaceWithValue"))
                        .and_then(Json::as_f64)
                        .context("setting replaceWithValue must be a number")?,
                ),
                other => bail!("reducer mode '{other}' is not supported"),
            };
            Ok(Expression::Reduce {
                input: input()?,
                reducer,
                drop_non_numbers: mode == "dropNN",
                replace_non_numbers: replace,
            })
        }
        "threshold" => {
            let conditions = model
                .get("conditions")
                .and_then(Json::as_array)
                .context("no conditions")?;
            ensure!(
                conditions.len() == 1,
                "threshold expression requires exactly one condition"
            );
            let evaluator = &conditions[0]["evaluator"];
            let kind = evaluator["type"].as_str().context("no evaluator type")?;
            let params: Vec<f64> = evaluator["params"]
                .as_array()
                .context("no evaluator params")?
                .iter()
                .map(|p| p.as_f64().context("param is not a number"))
                .collect::<Result<_>>()?;
            let needs = match kind {
                "gt" | "lt" => 1,
                "within_range" | "outside_range" => 2,
                other => bail!("threshold type `{other}` is not modelled"),
            };
            ensure!(
                params.len() >= needs,
                "incorrect number of arguments for threshold function '{kind}': got {} but need {needs}",
                params.len()
            );
            Ok(Expression::Threshold {
                input: input()?,
                kind: kind.to_owned(),
                params,
            })
        }
        "math" => {
            let text = model
                .get("expression")
                .and_then(Json::as_str)
                .context("command is missing an expression")?;
            Ok(Expression::Math(MathExpr::parse(text)?))
        }
        other => bail!("expression type `{other}` is not modelled"),
    }
}

impl Expression {
    /// The refIds it reads.
    pub fn inputs(&self) -> Vec<String> {
        match self {
            Expression::Reduce { input, .. } | Expression::Threshold { input, .. } => {
                vec![input.clone()]
            }
            Expression::Math(m) => m.vars(),
        }
    }
}

/// One number of a result: an alert instance's labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Number {
    /// Labels (string columns).
    pub labels: Labels,
    /// Value; `None` is null.
    pub value: Option<f64>,
}

/// A query's or expression's result.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// No frame at all.
    NoData,
    /// A set of numbers (possibly empty).
    Numbers(Vec<Number>),
}

/// `ResultConverter.Convert` for one table frame.
pub fn convert(ref_id: &str, frame: &Frame) -> Result<Value> {
    if frame.names.is_empty() {
        return Ok(Value::NoData);
    }
    let kinds = frame.kinds();
    let numeric: Vec<usize> = (0..kinds.len())
        .filter(|i| kinds[*i] == FieldKind::Number)
        .collect();
    let other = kinds.iter().filter(|k| **k == FieldKind::Other).count();
    ensure!(
        numeric.len() == 1 && other == 0,
        "{ref_id}: columns {:?} of types {:?}: Grafana makes numbers of a table only with exactly \
         one numeric column and string columns; this is not a number table",
        frame.names,
        frame.types
    );
    let value_at = numeric[0];
    let mut numbers = Vec::with_capacity(frame.rows.len());
    for row in &frame.rows {
        let mut labels = Labels::new();
        for (i, kind) in kinds.iter().enumerate() {
            if *kind == FieldKind::String {
                let v = row[i].clone().with_context(|| {
                    format!("{ref_id}: null in label column `{}`", frame.names[i])
                })?;
                labels.insert(frame.names[i].clone(), v);
            }
        }
        let value = match &row[value_at] {
            None => None,
            Some(v) => Some(
                v.parse::<f64>()
                    .with_context(|| format!("{ref_id}: value `{v}`"))?,
            ),
        };
        numbers.push(Number { labels, value });
    }
    Ok(Value::Numbers(numbers))
}

/// The state of one alert instance after an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The condition holds.
    Alerting,
    /// It does not.
    Normal,
    /// No value.
    NoData,
}

impl Rule {
    /// The SQL of each data source query for an evaluation at `now`
    /// (Unix seconds), macros expanded by the plugin: (refId, SQL).
    pub fn sql_at(&self, now: u64) -> Result<Vec<(String, String)>> {
        self.queries
            .iter()
            .map(|(ref_id, _, sql, range)| {
                let range = TimeRange {
                    from: now.saturating_sub(range.from),
                    to: now.saturating_sub(range.to),
                };
                Ok((ref_id.clone(), expand_macros(sql, range)?))
            })
            .collect()
    }

    /// Evaluates the rule on its queries' results: each instance's labels
    /// and state, or `None` when the condition has no data at all (then
    /// `noDataState` applies).
    pub fn evaluate(
        &self,
        frames: &BTreeMap<String, Frame>,
    ) -> Result<Option<Vec<(Labels, State)>>> {
        let mut values = BTreeMap::new();
        for (ref_id, ..) in &self.queries {
            let frame = frames
                .get(ref_id)
                .with_context(|| format!("no result for {ref_id}"))?;
            values.insert(ref_id.clone(), convert(ref_id, frame)?);
        }
        let result = self.value_of(&self.condition, &mut values, 0)?;
        let numbers = match result {
            Value::NoData => return Ok(None),
            Value::Numbers(n) if n.is_empty() => return Ok(None),
            Value::Numbers(n) => n,
        };
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for n in numbers {
            ensure!(
                seen.insert(n.labels.clone()),
                "`{}`: frame cannot uniquely be identified by its labels: duplicate results with labels {:?}",
                self.title,
                n.labels
            );
            let state = match n.value {
                None => State::NoData,
                Some(v) if v != 0.0 => State::Alerting,
                Some(_) => State::Normal,
            };
            out.push((n.labels, state));
        }
        Ok(Some(out))
    }

    fn value_of(
        &self,
        ref_id: &str,
        values: &mut BTreeMap<String, Value>,
        depth: usize,
    ) -> Result<Value> {
        ensure!(depth < 16, "`{}`: expressions form a cycle", self.title);
        if let Some(v) = values.get(ref_id) {
            return Ok(v.clone());
        }
        let expr = self
            .expressions
            .get(ref_id)
            .with_context(|| format!("unable to find dependent node `{ref_id}`"))?;
        let result = match expr {
            Expression::Reduce {
                input,
                drop_non_numbers,
                replace_non_numbers,
                ..
            } => match self.value_of(input, values, depth + 1)? {
                Value::NoData => Value::NoData,
                // A number is already reduced: the reducer is a no-op.
                Value::Numbers(ns) => Value::Numbers(
                    ns.into_iter()
                        .filter_map(|mut n| {
                            let finite = n.value.is_some_and(f64::is_finite);
                            if !finite && *drop_non_numbers {
                                return None;
                            }
                            if !finite && let Some(r) = replace_non_numbers {
                                n.value = Some(*r);
                            }
                            Some(n)
                        })
                        .collect(),
                ),
            },
            Expression::Threshold {
                input,
                kind,
                params,
            } => match self.value_of(input, values, depth + 1)? {
                Value::NoData => Value::NoData,
                Value::Numbers(ns) => Value::Numbers(
                    ns.into_iter()
                        .map(|mut n| {
                            n.value = n.value.map(|f| {
                                let hit = match kind.as_str() {
                                    "gt" => f > params[0],
                                    "lt" => f < params[0],
                                    "within_range" => f > params[0] && f < params[1],
                                    _ => f < params[0] || f > params[1],
                                };
                                if hit { 1.0 } else { 0.0 }
                            });
                            n
                        })
                        .collect(),
                ),
            },
            Expression::Math(m) => {
                let mut inputs = BTreeMap::new();
                for var in m.vars() {
                    inputs.insert(var.clone(), self.value_of(&var, values, depth + 1)?);
                }
                m.evaluate(&inputs)?
            }
        };
        values.insert(ref_id.to_owned(), result.clone());
        Ok(result)
    }
}

/// A parsed `math` expression: numbers, `$A` / `${A}`, unary `-` `!`,
/// binary `* / % + - < > <= >= == != && ||`, parentheses.
#[derive(Debug, Clone)]
pub enum MathExpr {
    /// A constant.
    Scalar(f64),
    /// A refId.
    Var(String),
    /// `op x`.
    Unary(char, Box<MathExpr>),
    /// `a op b`.
    Binary(String, Box<MathExpr>, Box<MathExpr>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Num(f64),
    Var(String),
    Op(String),
    Open,
    Close,
}

/// `lex.go`: a `$` must be followed by a name or `{name}`.
fn lex(text: &str) -> Result<Vec<Token>> {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let is_varchar = |c: char| c.is_alphanumeric() || c == '_' || c == '.';
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\n' => i += 1,
            '$' => {
                i += 1;
                let name: String;
                if chars.get(i) == Some(&'{') {
                    let end = chars[i..]
                        .iter()
                        .position(|c| *c == '}')
                        .context("unterminated variable missing closing }")?;
                    name = chars[i + 1..i + end]
                        .iter()
                        .collect::<String>()
                        .trim()
                        .to_owned();
                    i += end + 1;
                } else {
                    let len = chars[i..].iter().take_while(|c| is_varchar(**c)).count();
                    name = chars[i..i + len].iter().collect();
                    i += len;
                }
                ensure!(
                    !name.is_empty(),
                    "math expression `{text}`: incomplete variable"
                );
                ensure!(
                    name.chars().all(is_varchar),
                    "math expression `{text}`: unsupported character in variable `{name}`"
                );
                out.push(Token::Var(name));
            }
            '(' => {
                out.push(Token::Open);
                i += 1;
            }
            ')' => {
                out.push(Token::Close);
                i += 1;
            }
            d if d.is_ascii_digit() || d == '.' => {
                let len = chars[i..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit() || **c == '.' || **c == 'e')
                    .count();
                let s: String = chars[i..i + len].iter().collect();
                out.push(Token::Num(
                    s.parse().with_context(|| format!("number `{s}`"))?,
                ));
                i += len;
            }
            _ => {
                let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
                if ["<=", ">=", "==", "!=", "&&", "||"].contains(&two.as_str()) {
                    out.push(Token::Op(two));
                    i += 2;
                } else if "+-*/%<>!".contains(c) {
                    out.push(Token::Op(c.to_string()));
                    i += 1;
                } else {
                    bail!("math expression `{text}`: unexpected `{c}`");
                }
            }
        }
    }
    Ok(out)
}

impl MathExpr {
    /// Parses an expression, with Grafana's lexer rules.
    pub fn parse(text: &str) -> Result<Self> {
        let tokens = lex(text)?;
        let mut pos = 0;
        let e = Self::parse_binary(&tokens, &mut pos, 0)?;
        ensure!(
            pos == tokens.len(),
            "math expression `{text}`: unexpected {:?}",
            tokens.get(pos)
        );
        Ok(e)
    }

    fn precedence(op: &str) -> Option<u8> {
        Some(match op {
            "||" => 1,
            "&&" => 2,
            "==" | "!=" | "<" | ">" | "<=" | ">=" => 3,
            "+" | "-" => 4,
            "*" | "/" | "%" => 5,
            _ => return None,
        })
    }

    fn parse_binary(tokens: &[Token], pos: &mut usize, min: u8) -> Result<Self> {
        let mut left = Self::parse_unary(tokens, pos)?;
        while let Some(Token::Op(op)) = tokens.get(*pos) {
            let Some(p) = Self::precedence(op) else { break };
            if p <= min {
                break;
            }
            *pos += 1;
            let right = Self::parse_binary(tokens, pos, p)?;
            left = MathExpr::Binary(op.clone(), Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn parse_unary(tokens: &[Token], pos: &mut usize) -> Result<Self> {
        let t = tokens.get(*pos).context("expression ends early")?.clone();
        *pos += 1;
        Ok(match t {
            Token::Num(n) => MathExpr::Scalar(n),
            Token::Var(v) => MathExpr::Var(v),
            Token::Op(op) if op == "-" || op == "!" => MathExpr::Unary(
                op.chars().next().unwrap_or('-'),
                Box::new(Self::parse_unary(tokens, pos)?),
            ),
            Token::Open => {
                let e = Self::parse_binary(tokens, pos, 0)?;
                ensure!(tokens.get(*pos) == Some(&Token::Close), "unclosed (");
                *pos += 1;
                e
            }
            other => bail!("unexpected {other:?}"),
        })
    }

    /// The refIds it reads.
    pub fn vars(&self) -> Vec<String> {
        match self {
            MathExpr::Scalar(_) => vec![],
            MathExpr::Var(v) => vec![v.clone()],
            MathExpr::Unary(_, e) => e.vars(),
            MathExpr::Binary(_, a, b) => [a.vars(), b.vars()].concat(),
        }
    }

    /// Evaluates over number sets; two sets combine where their labels are
    /// equal or one holds the other's (mathexp's union).
    fn evaluate(&self, inputs: &BTreeMap<String, Value>) -> Result<Value> {
        Ok(match self.eval(inputs)? {
            Operand::Scalar(s) => Value::Numbers(vec![Number {
                labels: Labels::new(),
                value: s,
            }]),
            Operand::Set(None) => Value::NoData,
            Operand::Set(Some(ns)) => Value::Numbers(ns),
        })
    }

    fn eval(&self, inputs: &BTreeMap<String, Value>) -> Result<Operand> {
        Ok(match self {
            MathExpr::Scalar(s) => Operand::Scalar(Some(*s)),
            MathExpr::Var(v) => match inputs.get(v).context("unknown variable")? {
                Value::NoData => Operand::Set(None),
                Value::Numbers(n) => Operand::Set(Some(n.clone())),
            },
            MathExpr::Unary(op, e) => e.eval(inputs)?.map(&|x| {
                x.map(|x| {
                    if *op == '-' {
                        -x
                    } else if x == 0.0 {
                        1.0
                    } else {
                        0.0
                    }
                })
            }),
            MathExpr::Binary(op, a, b) => {
                let f = |x: f64, y: f64| -> f64 {
                    let t = |c: bool| if c { 1.0 } else { 0.0 };
                    match op.as_str() {
                        "+" => x + y,
                        "-" => x - y,
                        "*" => x * y,
                        "/" => x / y,
                        "%" => x % y,
                        "<" => t(x < y),
                        ">" => t(x > y),
                        "<=" => t(x <= y),
                        ">=" => t(x >= y),
                        "==" => t(x == y),
                        "!=" => t(x != y),
                        "&&" => t(x != 0.0 && y != 0.0),
                        _ => t(x != 0.0 || y != 0.0),
                    }
                };
                let g = |x: Option<f64>, y: Option<f64>| x.zip(y).map(|(x, y)| f(x, y));
                match (a.eval(inputs)?, b.eval(inputs)?) {
                    (Operand::Scalar(x), Operand::Scalar(y)) => Operand::Scalar(g(x, y)),
                    (Operand::Set(s), Operand::Scalar(y)) => Operand::Set(s).map(&|x| g(x, y)),
                    (Operand::Scalar(x), Operand::Set(s)) => Operand::Set(s).map(&|y| g(x, y)),
                    (Operand::Set(None), _) | (_, Operand::Set(None)) => Operand::Set(None),
                    (Operand::Set(Some(l)), Operand::Set(Some(r))) => {
                        let mut out = Vec::new();
                        for x in &l {
                            for y in &r {
                                let sub = |a: &Labels, b: &Labels| {
                                    a.iter().all(|(k, v)| b.get(k) == Some(v))
                                };
                                if sub(&x.labels, &y.labels) || sub(&y.labels, &x.labels) {
                                    let labels = if x.labels.len() >= y.labels.len() {
                                        &x.labels
                                    } else {
                                        &y.labels
                                    };
                                    out.push(Number {
                                        labels: labels.clone(),
                                        value: g(x.value, y.value),
                                    });
                                }
                            }
                        }
                        Operand::Set(Some(out))
                    }
                }
            }
        })
    }
}

enum Operand {
    Scalar(Option<f64>),
    Set(Option<Vec<Number>>),
}

impl Operand {
    fn map(self, f: &dyn Fn(Option<f64>) -> Option<f64>) -> Operand {
        match self {
            Operand::Scalar(s) => Operand::Scalar(f(s)),
            Operand::Set(None) => Operand::Set(None),
            Operand::Set(Some(ns)) => Operand::Set(Some(
                ns.into_iter()
                    .map(|mut n| {
                        n.value = f(n.value);
                        n
                    })
                    .collect(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [("X".to_owned(), "85".to_owned())].into()
    }

    #[test]
    fn provisioning_interpolation_follows_values_go() {
        assert_eq!(
            interpolate("$$A > ${X} and $X, $ 1", &env()),
            "$A > 85 and 85, $ 1"
        );
        assert_eq!(interpolate("${UNSET}", &env()), "");
    }

    #[test]
    fn durations_follow_prometheus() -> Result<()> {
        assert_eq!(parse_duration("1h30m")?, 5400);
        assert_eq!(parse_duration("0s")?, 0);
        assert_eq!(parse_duration("0")?, 0);
        assert!(parse_duration("${SPILLWAY_ALERT_CPU_FOR}").is_err());
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("5s1m").is_err());
        Ok(())
    }

    #[test]
    fn math_lexer_rejects_what_grafana_rejects() -> Result<()> {
        assert!(
            MathExpr::parse("$$A > 85").is_err(),
            "$$A is an incomplete variable"
        );
        assert!(MathExpr::parse("$A > ").is_err());
        let e = MathExpr::parse("${A} > 85 && $B < 2")?;
        assert_eq!(e.vars(), vec!["A".to_owned(), "B".to_owned()]);
        let a = Value::Numbers(vec![Number {
            labels: [("h".into(), "x".into())].into(),
            value: Some(90.0),
        }]);
        let b = Value::Numbers(vec![Number {
            labels: Labels::new(),
            value: Some(1.0),
        }]);
        let out = e.evaluate(&[("A".to_owned(), a), ("B".to_owned(), b)].into())?;
        assert_eq!(
            out,
            Value::Numbers(vec![Number {
                labels: [("h".into(), "x".into())].into(),
                value: Some(1.0)
            }])
        );
        Ok(())
    }

    fn frame(names: &[&str], types: &[&str], rows: &[&[&str]]) -> Frame {
        Frame {
            names: names.iter().map(|s| s.to_string()).collect(),
            types: types.iter().map(|s| s.to_string()).collect(),
            rows: rows
                .iter()
                .map(|r| r.iter().map(|c| Some(c.to_string())).collect())
                .collect(),
        }
    }

    #[test]
    fn a_table_becomes_numbers_only_with_one_numeric_column_and_strings() -> Result<()> {
        let ok = frame(&["host", "value"], &["String", "Float64"], &[&["a", "1.5"]]);
        assert!(matches!(convert("A", &ok)?, Value::Numbers(n) if n.len() == 1));
        let with_time = frame(
            &["host", "t", "value"],
            &["String", "DateTime", "Float64"],
            &[],
        );
        assert!(convert("A", &with_time).is_err());
        let two_numbers = frame(&["n", "value"], &["UInt64", "Float64"], &[]);
        assert!(convert("A", &two_numbers).is_err());
        Ok(())
    }

    const RULE: &str = r#"
apiVersion: 1
groups:
  - orgId: 1
    name: g
    folder: f
    interval: 10s
    rules:
      - uid: r
        title: R
        condition: C
        for: 0s
        annotations: { summary: "{{ .Labels.host }} at {{ .Values.B.Value }}" }
        data:
          - refId: A
            datasourceUid: ds
            relativeTimeRange: { from: 600, to: 0 }
            model: { refId: A, editorType: sql, format: 1, rawSql: "SELECT 'h' AS host, 90 AS value WHERE SQL" }
          - refId: B
            datasourceUid: __expr__
            model: { refId: B, type: reduce, expression: A, reducer: last, settings: { mode: dropNN } }
          - refId: C
            datasourceUid: __expr__
            model: { refId: C, type: threshold, expression: B, conditions: [ { evaluator: { type: gt, params: [85] } } ] }
"#;

    fn read(yaml: &str) -> Result<Vec<Rule>> {
        read_rules(yaml, &env(), &["ds".to_owned()].into())
    }

    #[test]
    fn a_rule_evaluates_per_label_set() -> Result<()> {
        let rules = read(RULE)?;
        let frames = [(
            "A".to_owned(),
            frame(
                &["host", "value"],
                &["String", "Float64"],
                &[&["hot", "90"], &["calm", "10"], &["gone", "nan"]],
            ),
        )]
        .into();
        let out = rules[0].evaluate(&frames)?.context("no data")?;
        let firing: Vec<&str> = out
            .iter()
            .filter(|(_, s)| *s == State::Alerting)
            .map(|(l, _)| l["host"].as_str())
            .collect();
        assert_eq!(firing, ["hot"]);
        assert_eq!(out.len(), 2, "dropNN dropped the NaN row");
        let dup = [(
            "A".to_owned(),
            frame(
                &["host", "value"],
                &["String", "Float64"],
                &[&["a", "90"], &["a", "1"]],
            ),
        )]
        .into();
        assert!(rules[0].evaluate(&dup).is_err(), "duplicate labels");
        Ok(())
    }

    #[test]
    fn references_grafana_does_not_replace_are_rejected() {
        let cases = [
            ("WHERE SQL", "WHERE time > now() - ${X}"),
            ("{{ .Values.B.Value }}", "${X}"),
            ("type: gt, params: [85]", "type: gt, params: [\"${X}\"]"),
            ("reducer: last", "reducer: median"),
            ("for: 0s", "for: ${X}"),
            ("for: 0s", "fro: 0s"),
            ("condition: C", "condition: D"),
            ("format: 1", "format: 0"),
        ];
        for (from, to) in cases {
            let yaml = RULE.replace(from, to);
            assert_ne!(yaml, RULE, "{from}");
            assert!(read(&yaml).is_err(), "accepted {to}");
        }
        let math = RULE.replace(
            "type: threshold, expression: B, conditions: [ { evaluator: { type: gt, params: [85] } } ]",
            "type: math, expression: \"$$A > 85\"",
        );
        assert!(read(&math).is_err(), "accepted $$A");
    }
}
