//! What starts a plugin's iterations: the `[trigger.*]` table of its
//! manifest. `queued` (the default), `schedule` (cron in a time zone, or a
//! fixed interval), `continuous` (a loop with a checkpoint) or `startup`
//! (once per host start). Also the schedule's tick arithmetic, which is
//! pure: it takes times, never reads a clock.

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Deserialize;
use std::time::Duration;

/// Milliseconds since the Unix epoch (the store's notion of time).
pub type Millis = i64;

/// The `[trigger]` table as written: at most one of its sub-tables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerTable {
    pub queued: Option<QueuedTable>,
    pub schedule: Option<ScheduleTable>,
    pub continuous: Option<ContinuousTable>,
    pub startup: Option<StartupTable>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueuedTable {}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleTable {
    pub cron: Option<String>,
    pub interval: Option<String>,
    pub timezone: Option<String>,
    #[serde(default)]
    pub overlap: Overlap,
    #[serde(default)]
    pub misfire: Misfire,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContinuousTable {
    pub delay: Option<String>,
    pub backoff: Option<String>,
    pub max_backoff: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartupTable {
    #[serde(default)]
    pub on_failure: OnFailure,
}

/// What a tick does while the schedule's previous run is still going.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overlap {
    /// The default: the tick is dropped; two runs of one schedule never overlap.
    #[default]
    Skip,
    /// The tick waits for the previous run to end, then runs.
    Queue,
    /// The tick runs beside the previous run.
    Allow,
}

/// What a schedule does with ticks that passed while no host was running
/// (or while its host was too late to fire them on time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Misfire {
    /// The default: the latest missed tick runs once, the rest are dropped.
    #[default]
    RunOnce,
    /// Missed ticks are dropped; the schedule waits for its next tick.
    Skip,
}

/// What a failed start-up plugin does to the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// The default, as a throwing `StartAsync` does: the host stops.
    #[default]
    StopHost,
    /// The failure is reported and the host serves anyway.
    Continue,
}

/// A plugin's trigger, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Trigger {
    #[default]
    Queued,
    Schedule(ScheduleTrigger),
    Continuous(ContinuousTrigger),
    Startup { on_failure: OnFailure },
}

impl Trigger {
    pub fn name(&self) -> &'static str {
        match self {
            Trigger::Queued => "queued",
            Trigger::Schedule(_) => "schedule",
            Trigger::Continuous(_) => "continuous",
            Trigger::Startup { .. } => "startup",
        }
    }

    /// Whether clients may enqueue jobs of this kind (a schedule's kind may
    /// also be enqueued by hand, to run it now).
    pub fn accepts_jobs(&self) -> bool {
        matches!(self, Trigger::Queued | Trigger::Schedule(_))
    }

    /// A one-line description for listings and logs.
    pub fn describe(&self) -> String {
        match self {
            Trigger::Queued => "queued".into(),
            Trigger::Schedule(s) => format!("schedule {} (overlap {}, misfire {})", s.when, as_written(&s.overlap), as_written(&s.misfire)),
            Trigger::Continuous(c) => format!(
                "continuous (delay {}, backoff {} up to {})",
                humantime::format_duration(c.delay),
                humantime::format_duration(c.backoff),
                humantime::format_duration(c.max_backoff)
            ),
            Trigger::Startup { on_failure } => format!("startup (on failure: {})", as_written(on_failure)),
        }
    }
}

/// A manifest value as the manifest spells it (`run-once`, not `RunOnce`),
/// for logs and messages.
pub fn as_written(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(word)) => word,
        Ok(other) => other.to_string(),
        Err(_) => String::from("?"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleTrigger {
    pub when: When,
    pub overlap: Overlap,
    pub misfire: Misfire,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContinuousTrigger {
    /// Pause between two passes.
    pub delay: Duration,
    /// Pause after the first failed pass in a row; doubled per failure.
    pub backoff: Duration,
    /// Ceiling of that pause.
    pub max_backoff: Duration,
}

/// Default pause between two passes of a continuous loop.
pub const DEFAULT_LOOP_DELAY: Duration = Duration::from_secs(1);
/// Default pause after a failed pass.
pub const DEFAULT_LOOP_BACKOFF: Duration = Duration::from_secs(5);
/// Default ceiling of the pause after failed passes.
pub const DEFAULT_LOOP_MAX_BACKOFF: Duration = Duration::from_secs(300);

/// When a schedule ticks.
#[derive(Debug, Clone)]
pub enum When {
    /// A cron line in a time zone (UTC unless one is named).
    Cron { line: String, cron: Cron, zone: String, tz: TimeZone },
    /// Every `interval`, at multiples of it since the Unix epoch, so every
    /// host computes the same ticks.
    Interval(Duration),
}

impl PartialEq for When {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (When::Cron { line: a, zone: za, .. }, When::Cron { line: b, zone: zb, .. }) => a == b && za == zb,
            (When::Interval(a), When::Interval(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for When {}

impl std::fmt::Display for When {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            When::Cron { line, zone, .. } => write!(f, "cron {line:?} in {zone}"),
            When::Interval(every) => write!(f, "every {}", humantime::format_duration(*every)),
        }
    }
}

impl When {
    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: Millis) -> Option<Millis> {
        match self {
            When::Interval(every) => {
                let every = every.as_millis() as i64;
                Some((after.div_euclid(every) + 1) * every)
            }
            When::Cron { cron, tz, .. } => {
                let start = Timestamp::from_millisecond(after).ok()?.to_zoned(tz.clone());
                let next = cron.find_next_occurrence(&start, false).ok()?;
                Some(next.timestamp().as_millisecond())
            }
        }
    }

    /// The latest tick at or before `at`.
    pub fn latest_at_or_before(&self, at: Millis) -> Option<Millis> {
        match self {
            When::Interval(every) => {
                let every = every.as_millis() as i64;
                Some(at.div_euclid(every) * every)
            }
            When::Cron { cron, tz, .. } => {
                let start = Timestamp::from_millisecond(at).ok()?.to_zoned(tz.clone());
                let previous = cron.find_previous_occurrence(&start, true).ok()?;
                Some(previous.timestamp().as_millisecond())
            }
        }
    }
}

/// The cron fields, in order, when seconds are given (6 fields) and when not (5).
const FIELDS_WITH_SECONDS: [&str; 6] = ["second", "minute", "hour", "day-of-month", "month", "day-of-week"];

/// Parses a cron line (5 fields, or 6 with seconds first). A bad line is
/// reported with the field at fault: each field is tried on its own, in a
/// line of wildcards, so the message says which one the parser refused.
pub fn parse_cron(line: &str) -> Result<Cron, String> {
    let parser = CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build();
    let fields: Vec<&str> = line.split_whitespace().collect();
    if !(5..=6).contains(&fields.len()) {
        return Err(format!(
            "{line:?} has {} fields; a cron line has 5 (minute hour day-of-month month day-of-week) or 6 (second first)",
            fields.len()
        ));
    }
    match parser.parse(line) {
        Ok(cron) => Ok(cron),
        Err(whole) => {
            let names = &FIELDS_WITH_SECONDS[6 - fields.len()..];
            for (i, field) in fields.iter().enumerate() {
                let mut probe = vec!["*"; fields.len()];
                probe[i] = field;
                if let Err(e) = parser.parse(&probe.join(" ")) {
                    return Err(format!("{line:?}: field {} ({}) {field:?} is invalid: {e}", i + 1, names[i]));
                }
            }
            Err(format!("{line:?} is invalid: {whole}"))
        }
    }
}

/// The longest interval, delay or backoff a trigger may name: a year.
/// Times computed from it stay far inside what clocks can add.
pub const MAX_TRIGGER_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

fn duration(field: &'static str, text: &str) -> Result<Duration, (&'static str, String)> {
    let parsed = humantime::parse_duration(text)
        .map_err(|e| (field, format!("{text:?} is not a duration like \"30s\" or \"5m\": {e}")))?;
    if parsed > MAX_TRIGGER_DURATION {
        return Err((field, format!("{text:?} is longer than the most a trigger may wait (366 days)")));
    }
    Ok(parsed)
}

impl TriggerTable {
    /// Validates the table; an error names the field and what is wrong.
    pub fn resolve(&self) -> Result<Trigger, (&'static str, String)> {
        let given: Vec<&str> = [
            ("queued", self.queued.is_some()),
            ("schedule", self.schedule.is_some()),
            ("continuous", self.continuous.is_some()),
            ("startup", self.startup.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        if given.len() > 1 {
            return Err(("trigger", format!("names {} triggers ({}); a plugin has exactly one", given.len(), given.join(", "))));
        }
        if let Some(s) = &self.schedule {
            let when = match (&s.cron, &s.interval) {
                (Some(_), Some(_)) => {
                    return Err(("trigger.schedule", "gives both `cron` and `interval`; give one".into()));
                }
                (None, None) => return Err(("trigger.schedule", "needs `cron` (a cron line) or `interval` (like \"30s\")".into())),
                (Some(line), None) => {
                    let cron = parse_cron(line).map_err(|e| ("trigger.schedule.cron", e))?;
                    let zone = s.timezone.clone().unwrap_or_else(|| "UTC".into());
                    let tz = TimeZone::get(&zone).map_err(|_| {
                        ("trigger.schedule.timezone", format!("{zone:?} is not a known IANA time zone (like \"Europe/Berlin\" or \"UTC\")"))
                    })?;
                    When::Cron { line: line.clone(), cron, zone, tz }
                }
                (None, Some(text)) => {
                    if s.timezone.is_some() {
                        return Err((
                            "trigger.schedule.timezone",
                            "applies to `cron` only; an interval ticks at fixed multiples of itself".into(),
                        ));
                    }
                    let every = duration("trigger.schedule.interval", text)?;
                    if every.as_millis() == 0 {
                        return Err(("trigger.schedule.interval", format!("{text:?} is zero; an interval must be at least 1ms")));
                    }
                    When::Interval(every)
                }
            };
            return Ok(Trigger::Schedule(ScheduleTrigger { when, overlap: s.overlap, misfire: s.misfire }));
        }
        if let Some(c) = &self.continuous {
            let pick = |field, text: &Option<String>, default| text.as_deref().map_or(Ok(default), |t| duration(field, t));
            let delay = pick("trigger.continuous.delay", &c.delay, DEFAULT_LOOP_DELAY)?;
            let backoff = pick("trigger.continuous.backoff", &c.backoff, DEFAULT_LOOP_BACKOFF)?;
            let max_backoff = pick("trigger.continuous.max_backoff", &c.max_backoff, DEFAULT_LOOP_MAX_BACKOFF.max(backoff))?;
            if backoff > max_backoff {
                return Err(("trigger.continuous.backoff", "must not exceed trigger.continuous.max_backoff".into()));
            }
            return Ok(Trigger::Continuous(ContinuousTrigger { delay, backoff, max_backoff }));
        }
        if let Some(s) = &self.startup {
            return Ok(Trigger::Startup { on_failure: s.on_failure });
        }
        Ok(Trigger::Queued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Millis {
        text.parse::<Timestamp>().unwrap().as_millisecond()
    }

    fn cron(line: &str, zone: &str) -> When {
        When::Cron { line: line.into(), cron: parse_cron(line).unwrap(), zone: zone.into(), tz: TimeZone::get(zone).unwrap() }
    }

    #[test]
    fn an_interval_ticks_at_multiples_of_itself() {
        let every = When::Interval(Duration::from_secs(30));
        assert_eq!(every.next_after(at("2026-11-22T10:00:10Z")), Some(at("2026-11-22T10:00:30Z")));
        assert_eq!(every.next_after(at("2026-11-22T10:00:30Z")), Some(at("2026-11-22T10:01:00Z")), "strictly after");
        assert_eq!(every.latest_at_or_before(at("2026-11-22T10:00:59.999Z")), Some(at("2026-11-22T10:00:30Z")));
        assert_eq!(every.latest_at_or_before(at("2026-11-22T10:01:00Z")), Some(at("2026-11-22T10:01:00Z")), "inclusive");
    }

    #[test]
    fn cron_with_and_without_seconds() {
        let five = cron("*/15 * * * *", "UTC");
        assert_eq!(five.next_after(at("2026-11-22T10:07:00Z")), Some(at("2026-11-22T10:15:00Z")));
        let six = cron("*/10 * * * * *", "UTC");
        assert_eq!(six.next_after(at("2026-11-22T10:07:01Z")), Some(at("2026-11-22T10:07:10Z")));
        assert_eq!(six.latest_at_or_before(at("2026-11-22T10:07:19Z")), Some(at("2026-11-22T10:07:10Z")));
    }

    #[test]
    fn cron_follows_its_time_zone() {
        // 09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC in summer.
        let nine = cron("0 9 * * *", "Europe/Berlin");
        assert_eq!(nine.next_after(at("2026-11-22T00:00:00Z")), Some(at("2026-11-22T08:00:00Z")));
        assert_eq!(nine.next_after(at("2026-07-01T00:00:00Z")), Some(at("2026-07-01T07:00:00Z")));
        let utc = cron("0 9 * * *", "UTC");
        assert_eq!(utc.next_after(at("2026-11-22T00:00:00Z")), Some(at("2026-11-22T09:00:00Z")));
    }

    #[test]
    fn daylight_saving_changes_neither_lose_nor_double_a_daily_tick() {
        // New York springs forward on 2026-03-08 (02:00 → 03:00): 02:30 does
        // not exist that day, and the tick runs right after the gap, once.
        let half_past_two = cron("30 2 * * *", "America/New_York");
        let spring = half_past_two.next_after(at("2026-03-08T05:00:00Z")).unwrap();
        assert_eq!(spring, at("2026-03-08T07:00:00Z"), "03:00 EDT, the first minute after the gap");
        assert_eq!(half_past_two.next_after(spring), Some(at("2026-03-09T06:30:00Z")), "02:30 EDT the next day");

        // It falls back on 2026-11-01 (02:00 → 01:00): 01:30 happens twice;
        // a daily tick runs at the first one only.
        let half_past_one = cron("30 1 * * *", "America/New_York");
        let fall = half_past_one.next_after(at("2026-11-01T04:00:00Z")).unwrap();
        assert_eq!(fall, at("2026-11-01T05:30:00Z"), "01:30 EDT");
        assert_eq!(half_past_one.next_after(fall), Some(at("2026-11-02T06:30:00Z")), "not again at 01:30 EST");

        // An hourly tick keeps running every real hour through the change.
        let hourly = cron("0 * * * *", "America/New_York");
        let mut t = at("2026-11-01T04:30:00Z");
        let mut ticks = Vec::new();
        for _ in 0..4 {
            t = hourly.next_after(t).unwrap();
            ticks.push(t);
        }
        assert_eq!(
            ticks,
            [at("2026-11-01T05:00:00Z"), at("2026-11-01T06:00:00Z"), at("2026-11-01T07:00:00Z"), at("2026-11-01T08:00:00Z")]
        );
    }

    #[test]
    fn a_bad_cron_line_names_the_field() {
        let err = parse_cron("0 25 * * *").unwrap_err();
        assert!(err.contains("field 2 (hour) \"25\""), "{err}");
        let err = parse_cron("0 0 9 * * MONDAY").unwrap_err();
        assert!(err.contains("(day-of-week)"), "{err}");
        let err = parse_cron("61 * * * * *").unwrap_err();
        assert!(err.contains("field 1 (second)"), "{err}");
        let err = parse_cron("* * *").unwrap_err();
        assert!(err.contains("has 3 fields"), "{err}");
    }

    fn table(text: &str) -> Result<Trigger, (&'static str, String)> {
        #[derive(Deserialize)]
        struct Doc {
            trigger: TriggerTable,
        }
        toml::from_str::<Doc>(text).unwrap().trigger.resolve()
    }

    #[test]
    fn triggers_resolve_with_their_defaults() {
        assert_eq!(table("[trigger.queued]").unwrap(), Trigger::Queued);
        let Trigger::Schedule(s) = table("[trigger.schedule]\ninterval = \"30s\"").unwrap() else { panic!() };
        assert_eq!((s.when, s.overlap, s.misfire), (When::Interval(Duration::from_secs(30)), Overlap::Skip, Misfire::RunOnce));
        let Trigger::Continuous(c) = table("[trigger.continuous]\ndelay = \"250ms\"").unwrap() else { panic!() };
        assert_eq!((c.delay, c.backoff), (Duration::from_millis(250), DEFAULT_LOOP_BACKOFF));
        assert_eq!(table("[trigger.startup]").unwrap(), Trigger::Startup { on_failure: OnFailure::StopHost });
    }

    #[test]
    fn bad_triggers_name_what_is_wrong() {
        let (field, problem) = table("[trigger.schedule]\ninterval = \"0s\"").unwrap_err();
        assert_eq!(field, "trigger.schedule.interval");
        assert!(problem.contains("zero"), "{problem}");
        let (field, problem) = table("[trigger.schedule]\ninterval = \"999999y\"").unwrap_err();
        assert_eq!(field, "trigger.schedule.interval");
        assert!(problem.contains("longer than the most"), "{problem}");
        let (field, problem) = table("[trigger.schedule]\ncron = \"0 * * * *\"\ntimezone = \"Mars/Olympus_Mons\"").unwrap_err();
        assert_eq!(field, "trigger.schedule.timezone");
        assert!(problem.contains("Mars/Olympus_Mons"), "{problem}");
        let (field, problem) = table("[trigger.schedule]\ninterval = \"1s\"\n[trigger.continuous]").unwrap_err();
        assert_eq!(field, "trigger");
        assert!(problem.contains("schedule, continuous"), "{problem}");
        let (field, _) = table("[trigger.schedule]\ncron = \"* * * * *\"\ninterval = \"1s\"").unwrap_err();
        assert_eq!(field, "trigger.schedule");
        let (field, _) = table("[trigger.continuous]\ndelay = \"soon\"").unwrap_err();
        assert_eq!(field, "trigger.continuous.delay");
    }
}
