//! `DateTime` values: a calendar date and time with a fixed UTC offset.

use std::fmt;
use std::str::FromStr;

use super::argument::ArgumentError;
use super::value::AmpValue;

/// An AMP `DateTime`: always 32 ASCII characters on the wire,
/// `YYYY-MM-DDTHH:MM:SS.ffffff±HH:MM`.
///
/// As in Twisted, a zero offset is written `-00:00` (the sign is `+` only for a positive offset),
/// and both signs are accepted when parsing. The value is checked as Python's `datetime` checks
/// it: year 1 to 9999, a real day of the month, and an offset under 24 hours.
///
/// ```
/// use pb::amp::DateTime;
///
/// let t = DateTime::from_parts((2012, 1, 23), (12, 34, 56, 54321), 0).unwrap();
/// assert_eq!(t.to_string(), "2012-01-23T12:34:56.054321-00:00");
/// let u: DateTime = "2012-01-23T12:34:56.054321+05:30".parse().unwrap();
/// assert_eq!(u.offset_minutes(), 330);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DateTime {
    year: u16,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    microsecond: u32,
    offset_minutes: i16,
}

fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        _ => 0,
    }
}

impl DateTime {
    /// Builds a value from `(year, month, day)`, `(hour, minute, second, microsecond)` and the
    /// offset from UTC in minutes, checking every field.
    pub fn from_parts(
        (year, month, day): (u16, u8, u8),
        (hour, minute, second, microsecond): (u8, u8, u8, u32),
        offset_minutes: i16,
    ) -> Result<Self, ArgumentError> {
        let ok = (1..=9999).contains(&year)
            && (1..=12).contains(&month)
            && day >= 1
            && day <= days_in_month(year, month)
            && hour < 24
            && minute < 60
            && second < 60
            && microsecond < 1_000_000
            && offset_minutes.unsigned_abs() < 24 * 60;
        if !ok {
            return Err(ArgumentError::Invalid {
                amp_type: "DateTime",
                reason: format!(
                    "no such date and time: {year}-{month}-{day} {hour}:{minute}:{second}.{microsecond} offset {offset_minutes}"
                ),
            });
        }
        Ok(Self {
            year,
            month,
            day,
            hour,
            minute,
            second,
            microsecond,
            offset_minutes,
        })
    }

    /// `(year, month, day)`.
    pub fn date(&self) -> (u16, u8, u8) {
        (self.year, self.month, self.day)
    }

    /// `(hour, minute, second, microsecond)`.
    pub fn time(&self) -> (u8, u8, u8, u32) {
        (self.hour, self.minute, self.second, self.microsecond)
    }

    /// The offset from UTC in minutes (east positive).
    pub fn offset_minutes(&self) -> i16 {
        self.offset_minutes
    }
}

impl fmt::Display for DateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.offset_minutes > 0 { '+' } else { '-' };
        let off = self.offset_minutes.unsigned_abs();
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}{sign}{:02}:{:02}",
            self.year,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            self.microsecond,
            off / 60,
            off % 60
        )
    }
}

impl FromStr for DateTime {
    type Err = ArgumentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ArgumentError::invalid("DateTime", s.as_bytes());
        let b = s.as_bytes();
        if b.len() != 32 {
            return Err(bad());
        }
        let num = |from: usize, to: usize| -> Result<u32, ArgumentError> {
            let part = b.get(from..to).ok_or_else(bad)?;
            if !part.iter().all(u8::is_ascii_digit) {
                return Err(bad());
            }
            std::str::from_utf8(part)
                .map_err(|_| bad())?
                .parse()
                .map_err(|_| bad())
        };
        let seps = [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
            (29, b':'),
        ];
        if !seps.iter().all(|(i, c)| b.get(*i) == Some(c)) {
            return Err(bad());
        }
        let sign: i16 = match b.get(26) {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => return Err(bad()),
        };
        let narrow = |v: u32| u8::try_from(v).map_err(|_| bad());
        let off_h = num(27, 29)?;
        let off_m = num(30, 32)?;
        if off_m >= 60 {
            return Err(bad());
        }
        let offset = i16::try_from(off_h * 60 + off_m).map_err(|_| bad())? * sign;
        Self::from_parts(
            (
                u16::try_from(num(0, 4)?).map_err(|_| bad())?,
                narrow(num(5, 7)?)?,
                narrow(num(8, 10)?)?,
            ),
            (
                narrow(num(11, 13)?)?,
                narrow(num(14, 16)?)?,
                narrow(num(17, 19)?)?,
                num(20, 26)?,
            ),
            offset,
        )
    }
}

impl AmpValue for DateTime {
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), ArgumentError> {
        out.extend_from_slice(self.to_string().as_bytes());
        Ok(())
    }

    fn decode_value(bytes: &[u8]) -> Result<Self, ArgumentError> {
        std::str::from_utf8(bytes)
            .map_err(|_| ArgumentError::invalid("DateTime", bytes))?
            .parse()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects() {
        for s in [
            "2012-01-23T12:34:56.054321-00:00",
            "2012-01-23T12:34:56.054321+05:30",
            "2010-12-25T00:00:00.000000-00:00",
            "2000-02-29T23:59:59.999999-23:59",
        ] {
            assert_eq!(s.parse::<DateTime>().unwrap().to_string(), s);
        }
        let plus_zero: DateTime = "2012-01-23T12:34:56.054321+00:00".parse().unwrap();
        assert_eq!(plus_zero.to_string(), "2012-01-23T12:34:56.054321-00:00");
        for s in [
            "2012-01-23T12:34:56.054321Z",
            "2012-01-23T12:34:56.054321*00:00",
            "2001-02-29T00:00:00.000000-00:00",
            "0000-01-01T00:00:00.000000-00:00",
            "2012-01-23T12:34:56.054321-24:00",
            "2012-13-23T12:34:56.054321-00:00",
        ] {
            assert!(s.parse::<DateTime>().is_err(), "{s}");
        }
    }
}
