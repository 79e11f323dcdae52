//! Usage as SendGrid's stats: what a range of stored buckets reads as.
//!
//! Decisions are counted per key, outcome and scope into minute, hour and
//! day buckets ([`Grain`]); a reader asks for a range by day, week, month,
//! hour or minute ([`Aggregate`]) and gets one [`Point`] per period, every
//! outcome present (zeros included), as SendGrid's `/v3/stats` answers.
//! Pure: the sidecar's `usage` module stores and fetches the buckets.

use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate};

/// The outcomes a decision counts as, in `scopegate.v1.Decision`'s order:
/// its names, lower-cased.
pub const OUTCOMES: [&str; 13] = [
    "allowed",
    "missing_token",
    "malformed_token",
    "unknown_key",
    "insufficient_scope",
    "no_route",
    "invalid_path",
    "method_override",
    "expired",
    "disabled",
    "ip_not_allowed",
    "rate_limited",
    "usage_exceeded",
];

/// The account and key of a decision that named no key (none sent, or
/// one that cannot be parsed or does not exist); also the scope of a
/// decision that required none (no route).
pub const NOBODY: &str = "-";

/// Counts of one bucket: (outcome, scope) → decisions.
pub type Tally = BTreeMap<(String, String), u64>;

/// How finely counts are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Grain {
    Minute,
    Hour,
    Day,
}

impl Grain {
    pub const ALL: [Grain; 3] = [Grain::Minute, Grain::Hour, Grain::Day];

    pub fn secs(self) -> i64 {
        match self {
            Grain::Minute => 60,
            Grain::Hour => 3_600,
            Grain::Day => 86_400,
        }
    }

    /// The bucket holding unix second `at` (its index since the epoch).
    pub fn bucket(self, at: i64) -> u32 {
        at.div_euclid(self.secs()).clamp(0, u32::MAX as i64) as u32
    }

    /// The bucket a unix minute falls in.
    pub fn bucket_of_minute(self, minute: u32) -> u32 {
        minute / (self.secs() / 60) as u32
    }

    /// A bucket's first unix second.
    pub fn start(self, bucket: u32) -> i64 {
        bucket as i64 * self.secs()
    }

    pub fn name(self) -> &'static str {
        match self {
            Grain::Minute => "minute",
            Grain::Hour => "hour",
            Grain::Day => "day",
        }
    }
}

/// How a reader groups a range: SendGrid's `aggregated_by`, plus `hour`
/// and `minute`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregate {
    Minute,
    Hour,
    Day,
    Week,
    Month,
}

impl Aggregate {
    pub fn parse(text: &str) -> Option<Aggregate> {
        Some(match text {
            "minute" => Aggregate::Minute,
            "hour" => Aggregate::Hour,
            "day" => Aggregate::Day,
            "week" => Aggregate::Week,
            "month" => Aggregate::Month,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Aggregate::Minute => "minute",
            Aggregate::Hour => "hour",
            Aggregate::Day => "day",
            Aggregate::Week => "week",
            Aggregate::Month => "month",
        }
    }

    /// The stored buckets it is summed from.
    pub fn grain(self) -> Grain {
        match self {
            Aggregate::Minute => Grain::Minute,
            Aggregate::Hour => Grain::Hour,
            Aggregate::Day | Aggregate::Week | Aggregate::Month => Grain::Day,
        }
    }

    /// Days and longer are named by date; hours and minutes by time too.
    pub fn by_date(self) -> bool {
        self.grain() == Grain::Day
    }
}

/// What a reader asks for: `[start, end)` in unix seconds, aligned to the
/// aggregate's grain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub aggregate: Aggregate,
    pub start: i64,
    pub end: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("{field}: `{value}` is not a date (YYYY-MM-DD)")]
    Date { field: &'static str, value: String },
    #[error("{field}: `{value}` is not a unix time in seconds")]
    Time { field: &'static str, value: String },
    #[error("{field} is required")]
    Missing { field: &'static str },
    #[error("aggregated_by: `{0}` is not day, week, month, hour or minute")]
    Aggregate(String),
    #[error("{end_field} is before {start_field}")]
    EndBeforeStart {
        start_field: &'static str,
        end_field: &'static str,
    },
    #[error("the range spans more than {grain} buckets are kept ({kept}); ask for a shorter one or a coarser aggregated_by")]
    TooLong { grain: &'static str, kept: String },
    #[error("the answer would hold {entries} entries (periods × series; at most {MAX_ENTRIES}): ask for a shorter range, a coarser aggregated_by, fewer top_keys or no group_by")]
    TooManyEntries { entries: usize },
    #[error("{field}: dates and times cannot be mixed: aggregated_by {aggregate} takes {takes}")]
    Mixed {
        field: &'static str,
        aggregate: &'static str,
        takes: &'static str,
    },
}

impl RangeError {
    /// The query field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            RangeError::Date { field, .. }
            | RangeError::Time { field, .. }
            | RangeError::Missing { field }
            | RangeError::Mixed { field, .. } => field,
            RangeError::Aggregate(_) => "aggregated_by",
            RangeError::EndBeforeStart { end_field, .. } => end_field,
            RangeError::TooLong { .. } | RangeError::TooManyEntries { .. } => "aggregated_by",
        }
    }
}

/// The range's raw parts, as a query string gives them.
#[derive(Default, Debug, Clone)]
pub struct RangeQuery<'a> {
    pub aggregated_by: Option<&'a str>,
    pub start_date: Option<&'a str>,
    pub end_date: Option<&'a str>,
    pub start_time: Option<&'a str>,
    pub end_time: Option<&'a str>,
}

impl Range {
    /// Reads a query: days, weeks and months by `start_date` (required) and
    /// `end_date` (default: today), both inclusive; hours and minutes by
    /// `start_time` (required) and `end_time` (default: now), unix seconds.
    /// `kept`: how long each grain is kept, in seconds (a longer range is
    /// refused rather than answered with zeros that are not true).
    pub fn parse(query: &RangeQuery<'_>, now: i64, kept: &Kept) -> Result<Range, RangeError> {
        let aggregate = match query.aggregated_by {
            None | Some("") => Aggregate::Day,
            Some(text) => {
                Aggregate::parse(text).ok_or_else(|| RangeError::Aggregate(text.into()))?
            }
        };
        let (start, end, start_field, end_field) = if aggregate.by_date() {
            for (field, value) in [
                ("start_time", query.start_time),
                ("end_time", query.end_time),
            ] {
                if value.is_some() {
                    return Err(mixed(field, aggregate, "start_date and end_date"));
                }
            }
            let start = date(
                "start_date",
                query.start_date.ok_or(RangeError::Missing {
                    field: "start_date",
                })?,
            )?;
            let end = match query.end_date {
                Some(text) => date("end_date", text)?,
                None => Grain::Day.start(Grain::Day.bucket(now)),
            };
            (start, end + 86_400, "start_date", "end_date")
        } else {
            for (field, value) in [
                ("start_date", query.start_date),
                ("end_date", query.end_date),
            ] {
                if value.is_some() {
                    return Err(mixed(field, aggregate, "start_time and end_time"));
                }
            }
            let grain = aggregate.grain();
            let start = time(
                "start_time",
                query.start_time.ok_or(RangeError::Missing {
                    field: "start_time",
                })?,
            )?;
            let end = match query.end_time {
                Some(text) => time("end_time", text)?,
                None => now,
            };
            let align = |at: i64| grain.start(grain.bucket(at));
            (
                align(start),
                align(end) + grain.secs(),
                "start_time",
                "end_time",
            )
        };
        if end <= start || (aggregate.by_date() && end - start < 86_400) {
            return Err(RangeError::EndBeforeStart {
                start_field,
                end_field,
            });
        }
        let grain = aggregate.grain();
        let kept_secs = kept.secs(grain);
        if end - start > kept_secs + grain.secs() {
            return Err(RangeError::TooLong {
                grain: grain.name(),
                kept: duration_text(kept_secs),
            });
        }
        Ok(Range {
            aggregate,
            start,
            end,
        })
    }

    /// The stored buckets it covers, first and last.
    pub fn buckets(&self) -> (u32, u32) {
        let grain = self.aggregate.grain();
        (grain.bucket(self.start), grain.bucket(self.end - 1))
    }

    /// Its periods, `[start, end)` each, in order.
    pub fn periods(&self) -> Vec<(i64, i64)> {
        let mut periods = Vec::new();
        let mut at = self.start;
        while at < self.end {
            let next = match self.aggregate {
                Aggregate::Minute | Aggregate::Hour | Aggregate::Day => {
                    at + self.aggregate.grain().secs()
                }
                Aggregate::Week => {
                    let weekday = day_of(at).weekday().num_days_from_monday() as i64;
                    at + (7 - weekday) * 86_400
                }
                Aggregate::Month => {
                    let day = day_of(at);
                    let (year, month) = match day.month() {
                        12 => (day.year() + 1, 1),
                        month => (day.year(), month + 1),
                    };
                    NaiveDate::from_ymd_opt(year, month, 1).map_or(self.end, seconds_of)
                }
            };
            periods.push((at, next.min(self.end)));
            at = next;
        }
        periods
    }

    /// How a period is named: its date (`2026-12-01`) or, by hour and
    /// minute, its time (`2026-12-01T13:05:00Z`).
    pub fn label(&self, start: i64) -> String {
        let day = day_of(start);
        if self.aggregate.by_date() {
            return day.format("%Y-%m-%d").to_string();
        }
        let in_day = start.rem_euclid(86_400);
        format!(
            "{}T{:02}:{:02}:00Z",
            day.format("%Y-%m-%d"),
            in_day / 3_600,
            in_day % 3_600 / 60
        )
    }
}

fn mixed(field: &'static str, aggregate: Aggregate, takes: &'static str) -> RangeError {
    RangeError::Mixed {
        field,
        aggregate: aggregate.name(),
        takes,
    }
}

/// How long each grain is kept, seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kept {
    pub minute: i64,
    pub hour: i64,
    pub day: i64,
}

impl Default for Kept {
    /// 48 hours of minutes, 90 days of hours, 400 days of days.
    fn default() -> Kept {
        Kept {
            minute: 48 * 3_600,
            hour: 90 * 86_400,
            day: 400 * 86_400,
        }
    }
}

impl Kept {
    pub fn secs(&self, grain: Grain) -> i64 {
        match grain {
            Grain::Minute => self.minute,
            Grain::Hour => self.hour,
            Grain::Day => self.day,
        }
    }
}

/// `172800` → `48h`, `7776000` → `90d`.
pub fn duration_text(secs: i64) -> String {
    match secs {
        secs if secs % 86_400 == 0 => format!("{}d", secs / 86_400),
        secs if secs % 3_600 == 0 => format!("{}h", secs / 3_600),
        secs if secs % 60 == 0 => format!("{}m", secs / 60),
        secs => format!("{secs}s"),
    }
}

/// `90d`, `48h`, `30m`, `45s` → seconds.
pub fn parse_duration(text: &str) -> Option<i64> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: i64 = number.parse().ok()?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return None,
    };
    number.checked_mul(unit).filter(|secs| *secs > 0)
}

fn date(field: &'static str, text: &str) -> Result<i64, RangeError> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .filter(|day| (1970..=9999).contains(&day.year()) && text.len() == 10)
        .map(seconds_of)
        .ok_or_else(|| RangeError::Date {
            field,
            value: text.into(),
        })
}

fn time(field: &'static str, text: &str) -> Result<i64, RangeError> {
    text.parse::<i64>()
        .ok()
        .filter(|secs| (0..=253_402_300_799).contains(secs))
        .ok_or_else(|| RangeError::Time {
            field,
            value: text.into(),
        })
}

fn day_of(at: i64) -> NaiveDate {
    NaiveDate::from_num_days_from_ce_opt((at.div_euclid(86_400) + 719_163) as i32)
        .unwrap_or(NaiveDate::MIN)
}

fn seconds_of(day: NaiveDate) -> i64 {
    (day.num_days_from_ce() as i64 - 719_163) * 86_400
}

/// One period of a report: its name and a series per thing counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    /// Unix second the period starts.
    pub start: i64,
    pub date: String,
    pub series: Vec<Series>,
}

/// One thing's counts in a period: the total (no kind), a scope's, a key's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    /// `scope` or `api_key`; `None` for the total.
    pub kind: Option<&'static str>,
    pub name: Option<String>,
    /// Every outcome, zeros included.
    pub metrics: BTreeMap<String, u64>,
}

/// What was read for one subject (a key, or an account's total): its
/// buckets in the range.
pub struct Subject {
    /// `None`: the total; `Some(("api_key", id))`: one of the top keys.
    pub label: Option<(&'static str, String)>,
    pub buckets: Vec<(u32, Tally)>,
}

/// The most entries (periods × series) one report holds.
pub const MAX_ENTRIES: usize = 50_000;

/// The report's size in entries, before it is made.
pub fn entries(range: &Range, subjects: &[Subject], by_scope: bool) -> usize {
    let first = match subjects.first() {
        Some(subject) if by_scope => {
            let mut scopes: Vec<&str> = subject
                .buckets
                .iter()
                .flat_map(|(_, tally)| tally.keys().map(|(_, scope)| scope.as_str()))
                .collect();
            scopes.sort_unstable();
            scopes.dedup();
            scopes.len()
        }
        _ => 1,
    };
    let series = first + subjects.len().saturating_sub(1);
    range.periods().len().saturating_mul(series)
}

/// The report: a point per period of `range`, in each a series per subject
/// (per scope of the first subject with `by_scope`).
pub fn report(range: &Range, subjects: &[Subject], by_scope: bool) -> Vec<Point> {
    let grain = range.aggregate.grain();
    let periods = range.periods();
    let scopes: Vec<String> = if by_scope {
        let mut names: Vec<String> = subjects
            .iter()
            .take(1)
            .flat_map(|subject| subject.buckets.iter())
            .flat_map(|(_, tally)| tally.keys().map(|(_, scope)| scope.clone()))
            .collect();
        names.sort();
        names.dedup();
        names
    } else {
        Vec::new()
    };
    periods
        .iter()
        .map(|&(start, end)| {
            let in_period = |bucket: &u32| (start..end).contains(&grain.start(*bucket));
            let mut series = Vec::new();
            for (index, subject) in subjects.iter().enumerate() {
                let tallies = || {
                    subject
                        .buckets
                        .iter()
                        .filter(|(bucket, _)| in_period(bucket))
                        .flat_map(|(_, tally)| tally.iter())
                };
                if by_scope && index == 0 {
                    for scope in &scopes {
                        series.push(Series {
                            kind: Some("scope"),
                            name: Some(scope.clone()),
                            metrics: metrics(tallies().filter(|((_, s), _)| s == scope)),
                        });
                    }
                    continue;
                }
                series.push(Series {
                    kind: subject.label.as_ref().map(|(kind, _)| *kind),
                    name: subject.label.as_ref().map(|(_, name)| name.clone()),
                    metrics: metrics(tallies()),
                });
            }
            Point {
                start,
                date: range.label(start),
                series,
            }
        })
        .collect()
}

fn metrics<'a>(
    cells: impl Iterator<Item = (&'a (String, String), &'a u64)>,
) -> BTreeMap<String, u64> {
    let mut metrics: BTreeMap<String, u64> = OUTCOMES
        .iter()
        .map(|outcome| ((*outcome).to_owned(), 0))
        .collect();
    for ((outcome, _), count) in cells {
        *metrics.entry(outcome.clone()).or_default() += count;
    }
    metrics
}

/// Sum of every count in `buckets`.
pub fn total(buckets: &[(u32, Tally)]) -> u64 {
    buckets.iter().flat_map(|(_, tally)| tally.values()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEC_1: i64 = 1_764_547_200; // 2025-12-01T00:00:00Z, a Monday

    fn query<'a>(by: &'a str, start: &'a str, end: &'a str) -> RangeQuery<'a> {
        let dates = Aggregate::parse(by).is_none_or(Aggregate::by_date);
        RangeQuery {
            aggregated_by: Some(by),
            start_date: dates.then_some(start),
            end_date: dates.then_some(end),
            start_time: (!dates).then_some(start),
            end_time: (!dates).then_some(end),
        }
    }

    fn tally(cells: &[(&str, &str, u64)]) -> Tally {
        cells
            .iter()
            .map(|(outcome, scope, count)| (((*outcome).into(), (*scope).into()), *count))
            .collect()
    }

    #[test]
    fn days_weeks_and_months_cut_the_range_at_their_edges() {
        let now = DEC_1 + 100 * 86_400;
        let kept = Kept::default();
        let days = Range::parse(&query("day", "2025-12-01", "2025-12-03"), now, &kept).unwrap();
        let labels: Vec<String> = days.periods().iter().map(|p| days.label(p.0)).collect();
        assert_eq!(labels, ["2025-12-01", "2025-12-02", "2025-12-03"]);
        let weeks = Range::parse(&query("week", "2025-12-03", "2025-12-16"), now, &kept).unwrap();
        let labels: Vec<String> = weeks.periods().iter().map(|p| weeks.label(p.0)).collect();
        assert_eq!(labels, ["2025-12-03", "2025-12-08", "2025-12-15"]);
        let months = Range::parse(&query("month", "2025-12-30", "2026-02-02"), now, &kept).unwrap();
        let periods = months.periods();
        let labels: Vec<String> = periods.iter().map(|p| months.label(p.0)).collect();
        assert_eq!(labels, ["2025-12-30", "2026-01-01", "2026-02-01"]);
        assert_eq!(periods[1].1 - periods[1].0, 31 * 86_400);
        assert_eq!(periods.last().unwrap().1, months.end);
    }

    #[test]
    fn hours_and_minutes_are_named_by_time_and_include_their_last_bucket() {
        let now = DEC_1 + 86_400;
        let start = (DEC_1 + 13 * 3_600 + 5 * 60 + 7).to_string();
        let end = (DEC_1 + 13 * 3_600 + 7 * 60).to_string();
        let range = Range::parse(&query("minute", &start, &end), now, &Kept::default()).unwrap();
        let labels: Vec<String> = range.periods().iter().map(|p| range.label(p.0)).collect();
        assert_eq!(
            labels,
            [
                "2025-12-01T13:05:00Z",
                "2025-12-01T13:06:00Z",
                "2025-12-01T13:07:00Z"
            ]
        );
    }

    #[test]
    fn bad_ranges_are_refused_naming_the_field() {
        let now = DEC_1 + 10 * 86_400;
        let kept = Kept::default();
        let error = |q: RangeQuery<'_>| Range::parse(&q, now, &kept).unwrap_err().to_string();
        assert_eq!(
            error(query("day", "2025-12-05", "2025-12-01")),
            "end_date is before start_date"
        );
        assert_eq!(
            error(query("day", "2025-13-01", "2025-12-01")),
            "start_date: `2025-13-01` is not a date (YYYY-MM-DD)"
        );
        assert_eq!(
            error(query("fortnight", "2025-12-01", "2025-12-02")),
            "aggregated_by: `fortnight` is not day, week, month, hour or minute"
        );
        assert_eq!(
            error(query("minute", &DEC_1.to_string(), &(DEC_1 + 3 * 86_400).to_string())),
            "the range spans more than minute buckets are kept (2d); ask for a shorter one or a coarser aggregated_by"
        );
        assert_eq!(error(RangeQuery::default()), "start_date is required");
        let mixed = RangeQuery {
            aggregated_by: Some("hour"),
            start_date: Some("2025-12-01"),
            ..RangeQuery::default()
        };
        assert_eq!(
            error(mixed),
            "start_date: dates and times cannot be mixed: aggregated_by hour takes start_time and end_time"
        );
    }

    #[test]
    fn a_report_sums_buckets_per_period_with_every_outcome_and_splits_by_scope() {
        let now = DEC_1 + 10 * 86_400;
        let range = Range::parse(
            &query("hour", &DEC_1.to_string(), &(DEC_1 + 7_200).to_string()),
            now,
            &Kept::default(),
        )
        .unwrap();
        let first = Grain::Hour.bucket(DEC_1);
        let total = Subject {
            label: None,
            buckets: vec![
                (
                    first,
                    tally(&[
                        ("allowed", "mail.send", 7),
                        ("insufficient_scope", "stats.read", 2),
                    ]),
                ),
                (first + 2, tally(&[("allowed", "mail.send", 1)])),
            ],
        };
        let points = report(&range, &[total], false);
        assert_eq!(points.len(), 3);
        assert_eq!(points[0].series[0].metrics["allowed"], 7);
        assert_eq!(points[0].series[0].metrics["insufficient_scope"], 2);
        assert_eq!(points[0].series[0].metrics.len(), OUTCOMES.len());
        assert!(points[1].series[0]
            .metrics
            .values()
            .all(|count| *count == 0));
        assert_eq!(points[2].series[0].metrics["allowed"], 1);
        let total = Subject {
            label: None,
            buckets: vec![(
                first,
                tally(&[
                    ("allowed", "mail.send", 7),
                    ("insufficient_scope", "stats.read", 2),
                ]),
            )],
        };
        let by_scope = report(&range, &[total], true);
        let names: Vec<_> = by_scope[1]
            .series
            .iter()
            .map(|s| s.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            ["mail.send", "stats.read"],
            "every period names every scope"
        );
        assert_eq!(by_scope[0].series[1].metrics["insufficient_scope"], 2);
        assert_eq!(by_scope[0].series[1].metrics["allowed"], 0);
    }

    #[test]
    fn a_report_is_sized_before_it_is_made() {
        let now = DEC_1 + 10 * 86_400;
        let range = Range::parse(
            &query("minute", &(now - 47 * 3_600).to_string(), &now.to_string()),
            now,
            &Kept::default(),
        )
        .unwrap();
        let scopes: Vec<(&str, &str, u64)> = (0..20).map(|_| ("allowed", "x", 1)).collect();
        let mut tally = Tally::new();
        for index in 0..scopes.len() {
            tally.insert(("allowed".into(), format!("scope.{index}")), 1);
        }
        let subject = Subject {
            label: None,
            buckets: vec![(Grain::Minute.bucket(now), tally)],
        };
        let periods = range.periods().len();
        assert_eq!(
            entries(&range, std::slice::from_ref(&subject), false),
            periods
        );
        assert_eq!(
            entries(&range, std::slice::from_ref(&subject), true),
            periods * 20
        );
        assert!(
            periods * 20 > MAX_ENTRIES,
            "a by-scope minute report of 47 h is refused"
        );
    }

    #[test]
    fn durations_read_and_print_alike() {
        for text in ["36h", "90d", "400d", "30m", "45s"] {
            assert_eq!(duration_text(parse_duration(text).unwrap()), text);
        }
        for bad in ["", "h", "10", "10w", "-1d", "0d"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
