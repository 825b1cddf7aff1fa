//! Harbor's schedules as EventBridge's: a scheduled replication policy
//! becomes the reconcile function's `ReconcileSchedule`.

/// Why a Harbor cron has no EventBridge twin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    #[error("{0} fields, not six")]
    Fields(usize),
    #[error("EventBridge schedules to the minute, this one names seconds")]
    Seconds,
    #[error("both a day of the month and a day of the week")]
    BothDays,
    #[error("weekday {0:?}")]
    Weekday(String),
}

/// Harbor's six-field cron (`sec min hour dom month dow`, Sunday 0) as an
/// EventBridge `cron(min hour dom month dow year)` (Sunday 1, one of the
/// day fields `?`).
pub fn eventbridge_cron(harbor: &str) -> Result<String, CronError> {
    let f: Vec<&str> = harbor.split_whitespace().collect();
    let [sec, min, hour, dom, month, dow] = f[..] else {
        return Err(CronError::Fields(f.len()));
    };
    if sec != "0" {
        return Err(CronError::Seconds);
    }
    let (dom, dow) = match (dom, dow) {
        (d, "*" | "?") => (d.to_owned(), "?".to_owned()),
        ("*" | "?", w) => ("?".to_owned(), shift_weekdays(w)?),
        _ => return Err(CronError::BothDays),
    };
    Ok(format!("cron({min} {hour} {dom} {month} {dow} *)"))
}

/// Numeric weekdays moved from Sunday 0 to Sunday 1 (`1-5` → `2-6`);
/// names (`MON-FRI`) are the same in both.
fn shift_weekdays(w: &str) -> Result<String, CronError> {
    let mut out = String::new();
    let mut number = String::new();
    let flush = |number: &mut String, out: &mut String| -> Result<(), CronError> {
        if !number.is_empty() {
            let n: u32 = number.parse().map_err(|_| CronError::Weekday(number.clone()))?;
            // Harbor (Go's cron) takes 7 for Sunday too.
            out.push_str(&((n % 7) + 1).to_string());
            number.clear();
        }
        Ok(())
    };
    let mut after_slash = false;
    for c in w.chars() {
        if c.is_ascii_digit() && !after_slash {
            number.push(c);
            continue;
        }
        flush(&mut number, &mut out)?;
        after_slash = c == '/' || (after_slash && c.is_ascii_digit());
        out.push(c);
    }
    flush(&mut number, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harbor_weekday_crons_become_eventbridge_ones() {
        for (harbor, eventbridge) in [
            ("0 0 * * * *", Ok("cron(0 * * * ? *)")),
            ("0 30 2 * * 1-5", Ok("cron(30 2 ? * 2-6 *)")),
            ("0 0 3 * * 0,6", Ok("cron(0 3 ? * 1,7 *)")),
            ("0 0 3 * * 7", Ok("cron(0 3 ? * 1 *)")),
            ("0 0 3 * * MON-FRI", Ok("cron(0 3 ? * MON-FRI *)")),
            ("0 0 3 1 * *", Ok("cron(0 3 1 * ? *)")),
            ("0 */15 * * * *", Ok("cron(*/15 * * * ? *)")),
            ("0 0 3 * * */2", Ok("cron(0 3 ? * */2 *)")),
            ("30 0 3 * * *", Err(())),
            ("0 0 3 1 * 1", Err(())),
            ("0 0 3 * *", Err(())),
        ] {
            assert_eq!(eventbridge_cron(harbor).map_err(|_| ()), eventbridge.map(str::to_owned), "{harbor}");
        }
    }
}
