//! Credits: how much a key may spend, not how fast. A key may carry a
//! balance (`remaining`) and a refill (`amount` every UTC day, or every
//! month on `day_of_month`, the last day of shorter months); a request
//! costs 1 unless its route, its proxy or its Check says otherwise; a
//! request that cannot pay is refused and spends nothing.
//!
//! Pure: the periods, the terms' rules and no escalation. The sidecar's
//! `credits` module holds the balances (memory + sled, or Redis).

use chrono::{Datelike, NaiveDate};

/// How often a refill comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interval {
    Daily,
    Monthly,
}

impl Interval {
    pub fn parse(text: &str) -> Option<Interval> {
        match text {
            "daily" => Some(Interval::Daily),
            "monthly" => Some(Interval::Monthly),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Interval::Daily => "daily",
            Interval::Monthly => "monthly",
        }
    }
}

/// A refill: the balance is set back to `amount` once a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Refill {
    pub amount: u64,
    pub interval: Interval,
    /// Monthly: the day of the month it comes (1 to 31; the month's last
    /// day when shorter). Daily: 0.
    pub day_of_month: u8,
}

/// A key's credits as set: the balance then, and its refill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Credits {
    pub remaining: u64,
    pub refill: Option<Refill>,
}

/// A key's credits as the hot path reads them: the terms, and the
/// generation of its balance (bumped each time the terms set the balance:
/// a balance of an older generation starts again from `terms.remaining`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyCredits {
    pub terms: Credits,
    pub generation: u64,
}

/// The most credits a key may hold (and a refill may give): 10^15.
pub const MAX_CREDITS: u64 = 1_000_000_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreditsError {
    #[error("{field}: {value} is more than {MAX_CREDITS}")]
    TooMany { field: &'static str, value: u64 },
    #[error("refill.interval: `{0}` is not daily or monthly")]
    Interval(String),
    #[error("refill.day_of_month: {0} is not 1 to 31")]
    DayOfMonth(u32),
    #[error("refill.day_of_month: a daily refill has none")]
    DailyDay,
}

impl Refill {
    /// Checks a refill as the API gives it.
    pub fn new(amount: u64, interval: &str, day_of_month: u32) -> Result<Refill, CreditsError> {
        let interval =
            Interval::parse(interval).ok_or_else(|| CreditsError::Interval(interval.into()))?;
        if amount > MAX_CREDITS {
            return Err(CreditsError::TooMany {
                field: "refill.amount",
                value: amount,
            });
        }
        let day_of_month = match (interval, day_of_month) {
            (Interval::Daily, 0) => 0,
            (Interval::Daily, _) => return Err(CreditsError::DailyDay),
            (Interval::Monthly, day @ 1..=31) => day as u8,
            (Interval::Monthly, day) => return Err(CreditsError::DayOfMonth(day)),
        };
        Ok(Refill {
            amount,
            interval,
            day_of_month,
        })
    }

    /// `AMOUNT/daily` or `AMOUNT/monthly:DAY`: the form the CLI and the
    /// console take and show ([`Refill::text`]).
    pub fn parse(text: &str) -> Result<Refill, String> {
        let shape = || format!("`{text}` is not AMOUNT/daily or AMOUNT/monthly:DAY");
        let (amount, period) = text.split_once('/').ok_or_else(shape)?;
        let amount = amount.trim().parse::<u64>().map_err(|_| shape())?;
        let (interval, day) = match period.split_once(':') {
            Some((interval, day)) => (interval, day.trim().parse::<u32>().map_err(|_| shape())?),
            None => (period, 0),
        };
        Refill::new(amount, interval.trim(), day).map_err(|error| error.to_string())
    }

    /// The refill as [`Refill::parse`] reads it.
    pub fn text(&self) -> String {
        match self.interval {
            Interval::Daily => format!("{}/daily", self.amount),
            Interval::Monthly => format!("{}/monthly:{}", self.amount, self.day_of_month),
        }
    }

    /// The period holding unix second `at`: days since the epoch, or
    /// months since January 1970 counted from each month's refill day.
    pub fn period(&self, at: i64) -> u32 {
        let day = NaiveDate::from_num_days_from_ce_opt((at.div_euclid(86_400) + 719_163) as i32)
            .unwrap_or(NaiveDate::MIN);
        match self.interval {
            Interval::Daily => at.div_euclid(86_400).max(0) as u32,
            Interval::Monthly => {
                let months = (day.year() - 1970) * 12 + day.month0() as i32;
                let refill_day = u32::from(self.day_of_month).min(days_in_month(day));
                let months = if day.day() >= refill_day {
                    months
                } else {
                    months - 1
                };
                months.max(0) as u32
            }
        }
    }
}

fn days_in_month(day: NaiveDate) -> u32 {
    let (year, month) = match day.month() {
        12 => (day.year() + 1, 1),
        month => (day.year(), month + 1),
    };
    NaiveDate::from_ymd_opt(year, month, 1)
        .and_then(|next| next.pred_opt())
        .map_or(28, |last| last.day())
}

impl Credits {
    pub fn new(remaining: u64, refill: Option<Refill>) -> Result<Credits, CreditsError> {
        if remaining > MAX_CREDITS {
            return Err(CreditsError::TooMany {
                field: "remaining",
                value: remaining,
            });
        }
        Ok(Credits { remaining, refill })
    }
}

/// No escalation: what a caller whose own balance stands at `caller` (and
/// refills by `caller_refill`) may give a key. `None` for the caller: it
/// has no credits (unlimited), so anything. A caller with credits gives
/// only credits (never unlimited), no more than it has left, and a refill
/// only like its own (same interval, no larger amount).
pub fn within(
    caller: Option<(u64, Option<Refill>)>,
    given: Option<&Credits>,
) -> Result<(), String> {
    let Some((left, caller_refill)) = caller else {
        return Ok(());
    };
    let Some(given) = given else {
        return Err(format!(
            "the calling key has credits ({left} left): it cannot give a key unlimited credits"
        ));
    };
    if given.remaining > left {
        return Err(format!(
            "the calling key has {left} credits left: it cannot give {}",
            given.remaining
        ));
    }
    match (given.refill, caller_refill) {
        (None, _) => Ok(()),
        (Some(refill), Some(own))
            if refill.interval == own.interval && refill.amount <= own.amount =>
        {
            Ok(())
        }
        (Some(refill), _) => Err(format!(
            "the calling key cannot give a {} refill of {}: only one like its own, or none",
            refill.interval.name(),
            refill.amount
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(date: &str, time: u32) -> i64 {
        let day = NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap();
        (day.num_days_from_ce() as i64 - 719_163) * 86_400 + time as i64
    }

    #[test]
    fn a_daily_period_turns_at_midnight_utc() {
        let refill = Refill::new(10, "daily", 0).unwrap();
        let before = refill.period(at("2026-12-07", 86_399));
        assert_eq!(refill.period(at("2026-12-08", 0)), before + 1);
        assert_eq!(refill.period(at("2026-12-07", 0)), before);
    }

    #[test]
    fn a_monthly_period_turns_on_its_day_or_the_months_last() {
        let on_15 = Refill::new(10, "monthly", 15).unwrap();
        let december = on_15.period(at("2026-12-15", 0));
        assert_eq!(on_15.period(at("2026-12-14", 86_399)), december - 1);
        assert_eq!(on_15.period(at("2027-01-14", 0)), december);
        assert_eq!(on_15.period(at("2027-01-15", 0)), december + 1);
        let on_31 = Refill::new(10, "monthly", 31).unwrap();
        let january = on_31.period(at("2027-01-31", 0));
        assert_eq!(on_31.period(at("2027-02-27", 0)), january);
        assert_eq!(
            on_31.period(at("2027-02-28", 0)),
            january + 1,
            "February's last day"
        );
        assert_eq!(on_31.period(at("2027-03-30", 0)), january + 1);
        assert_eq!(on_31.period(at("2027-03-31", 0)), january + 2);
        let on_1 = Refill::new(10, "monthly", 1).unwrap();
        assert_eq!(
            on_1.period(at("2027-01-01", 0)),
            on_1.period(at("2026-12-31", 86_399)) + 1
        );
    }

    #[test]
    fn a_refill_reads_back_as_written() {
        for text in ["1000/daily", "5/monthly:31"] {
            assert_eq!(Refill::parse(text).unwrap().text(), text);
        }
        for bad in ["1000", "x/daily", "5/monthly", "5/monthly:x", "5/weekly"] {
            assert!(Refill::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_terms_are_refused_naming_the_field() {
        let error = |result: Result<Refill, CreditsError>| result.unwrap_err().to_string();
        assert_eq!(
            error(Refill::new(1, "weekly", 0)),
            "refill.interval: `weekly` is not daily or monthly"
        );
        assert_eq!(
            error(Refill::new(1, "monthly", 0)),
            "refill.day_of_month: 0 is not 1 to 31"
        );
        assert_eq!(
            error(Refill::new(1, "monthly", 32)),
            "refill.day_of_month: 32 is not 1 to 31"
        );
        assert_eq!(
            error(Refill::new(1, "daily", 3)),
            "refill.day_of_month: a daily refill has none"
        );
        assert!(error(Refill::new(u64::MAX, "daily", 0)).starts_with("refill.amount: "));
        assert!(Credits::new(MAX_CREDITS + 1, None)
            .unwrap_err()
            .to_string()
            .starts_with("remaining: "));
    }

    #[test]
    fn a_caller_with_credits_gives_no_more_than_it_has() {
        let daily_100 = Refill::new(100, "daily", 0).unwrap();
        let caller = Some((50, Some(daily_100)));
        let given = |remaining, refill| Credits { remaining, refill };
        assert!(
            within(None, None).is_ok(),
            "an unlimited caller gives anything"
        );
        assert!(within(caller, None).unwrap_err().contains("unlimited"));
        assert!(within(caller, Some(&given(51, None)))
            .unwrap_err()
            .contains("50 credits left"));
        assert!(within(caller, Some(&given(50, None))).is_ok());
        assert!(within(caller, Some(&given(10, Some(daily_100)))).is_ok());
        let bigger = Refill::new(101, "daily", 0).unwrap();
        assert!(within(caller, Some(&given(10, Some(bigger)))).is_err());
        let monthly = Refill::new(1, "monthly", 1).unwrap();
        assert!(
            within(caller, Some(&given(10, Some(monthly)))).is_err(),
            "another interval"
        );
        assert!(
            within(Some((50, None)), Some(&given(10, Some(daily_100)))).is_err(),
            "no refill of its own"
        );
    }
}
