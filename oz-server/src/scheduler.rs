//! Schedules: cron expressions (5 fields, UTC unless a time zone is given) and the loop that turns
//! due ticks into runs.
//!
//! Each schedule's next run time is stored. Every second the loop takes the due schedules and, for
//! each, in one transaction: moves `next_run` to the next tick after now (only if it is still the
//! value the loop read) and stores the run. So each tick makes exactly one run, even with several
//! servers or across a restart.
//!
//! **Missed ticks.** If the server was down across one or more ticks, the first pass after start-up
//! makes *one* run for all of them (not one per missed tick) and the schedule continues with the next
//! tick after now.

use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use tracing::{info, warn};

use crate::creation::{self, NewRun};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::ScheduleRecord;

const FIELDS: [&str; 5] = ["minute", "hour", "day of month", "month", "day of week"];

/// Parses a 5-field cron expression; an error names the field at fault.
pub fn parse_cron(expr: &str) -> Result<Cron, ApiError> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(ApiError::invalid(format!(
            "cron_schedule {expr:?} has {} fields; it needs 5: minute hour day-of-month month day-of-week",
            fields.len()
        )));
    }
    let parser = CronParser::builder().seconds(Seconds::Disallowed).build();
    match parser.parse(expr) {
        Ok(cron) => Ok(cron),
        Err(e) => {
            // Find the field that fails on its own, to name it.
            for (i, field) in fields.iter().enumerate() {
                let mut probe = ["*"; 5];
                probe[i] = field;
                if parser.parse(&probe.join(" ")).is_err() {
                    return Err(ApiError::invalid(format!(
                        "cron_schedule: the {} field {field:?} is invalid ({e})",
                        FIELDS[i]
                    )));
                }
            }
            Err(ApiError::invalid(format!("cron_schedule {expr:?} is invalid: {e}")))
        }
    }
}

/// Resolves a time zone name (`None` = UTC).
pub fn time_zone(name: Option<&str>) -> Result<TimeZone, ApiError> {
    match name {
        None | Some("UTC") | Some("") => Ok(TimeZone::UTC),
        Some(n) => {
            TimeZone::get(n).map_err(|_| ApiError::invalid(format!("timezone {n:?} is not a known IANA time zone")))
        }
    }
}

/// The first tick strictly after `after`.
pub fn next_tick(cron: &Cron, tz: &TimeZone, after: Timestamp) -> Result<Timestamp, ApiError> {
    let zoned = after.to_zoned(tz.clone());
    cron.find_next_occurrence(&zoned, false)
        .map(|z| z.timestamp())
        .map_err(|e| ApiError::invalid(format!("cron_schedule never fires: {e}")))
}

/// The next tick of a schedule after `after`.
pub fn schedule_next(s: &ScheduleRecord, after: Timestamp) -> Result<Timestamp, ApiError> {
    next_tick(&parse_cron(&s.cron)?, &time_zone(s.timezone.as_deref())?, after)
}

/// Runs the scheduler until the process ends.
pub async fn run(state: AppState) {
    loop {
        if let Err(e) = tick(&state).await {
            warn!("scheduler pass failed: {}", e.detail);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One pass: fires every due schedule once.
pub async fn tick(state: &AppState) -> Result<usize, ApiError> {
    let now = Timestamp::now();
    let mut fired = 0;
    for schedule in state.store.due_schedules(now).await? {
        let Some(expected) = schedule.next_run_at else { continue };
        let next = schedule_next(&schedule, now).ok();
        let new = NewRun {
            prompt: schedule.prompt.clone().unwrap_or_default(),
            title: Some(schedule.name.clone()),
            config: schedule.agent_config.clone(),
            source: "SCHEDULED_AGENT".into(),
            creator_id: schedule.created_by.clone(),
            schedule_id: Some(schedule.id.clone()),
            parent_run_id: None,
            metadata: None,
            trigger_url: None,
        };
        // A run that cannot be made is recorded with what the API would have answered.
        let prepared = creation::prepare(state, &schedule.team_id, new).await.map_err(ApiError::from);
        let outcome = match &prepared {
            Ok(run) => Ok(run),
            Err(e) => Err(e.detail.as_str()),
        };
        if state.store.fire_schedule(&schedule.id, expected, next, outcome, now).await? {
            fired += 1;
            match &prepared {
                Ok(run) => {
                    state.lifecycle.metrics().run_created(&run.source);
                    info!(schedule = %schedule.id, run = %run.id, "schedule fired")
                }
                Err(e) => warn!(schedule = %schedule.id, "schedule fired but no run could be made: {}", e.detail),
            }
        }
    }
    if fired > 0 {
        state.dispatcher.wake();
    }
    Ok(fired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_fields_and_errors_name_the_field() {
        parse_cron("*/5 * * * *").unwrap();
        parse_cron("0 9 * * 1-5").unwrap();
        let e = parse_cron("* * * *").unwrap_err();
        assert!(e.detail.contains("needs 5"), "{}", e.detail);
        let e = parse_cron("0 0 * * * *").unwrap_err();
        assert!(e.detail.contains("has 6 fields"), "{}", e.detail);
        for (expr, field) in [
            ("61 * * * *", "minute"),
            ("0 25 * * *", "hour"),
            ("0 0 32 * *", "day of month"),
            ("0 0 * 13 *", "month"),
            ("0 0 * * 9", "day of week"),
        ] {
            let e = parse_cron(expr).unwrap_err();
            assert!(e.detail.contains(field), "{expr}: {}", e.detail);
        }
    }

    #[test]
    fn next_ticks_in_utc_and_in_a_time_zone() {
        let cron = parse_cron("30 9 * * *").unwrap();
        let after: Timestamp = "2026-03-01T10:00:00Z".parse().unwrap();
        assert_eq!(next_tick(&cron, &TimeZone::UTC, after).unwrap().to_string(), "2026-03-02T09:30:00Z");
        let paris = time_zone(Some("Europe/Paris")).unwrap();
        assert_eq!(next_tick(&cron, &paris, after).unwrap().to_string(), "2026-03-02T08:30:00Z");
        assert!(time_zone(Some("Mars/Olympus")).is_err());
    }
}
