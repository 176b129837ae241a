//! What a canary run ended as (SPEC §7 `GET /v1/canaries` `result`), decided from what
//! the calling side saw and what the answering side reported. Pure code.

use std::fmt;
use std::str::FromStr;

/// The result of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunResult {
    /// Answered at our own far end and the code was heard right (or, to a QA phone,
    /// answered).
    Ok,
    /// Answered and heard, but other digits than the code.
    WrongDigits,
    /// Answered at our far end, and no code was recognised in what arrived.
    NotHeard,
    /// The call reached its far end but nobody answered it.
    NotAnswered,
    /// Placed, but it never arrived at the answer number within the timeout.
    NotDelivered,
    /// A SIP error (4xx-6xx other than no-answer causes, no response), or the gateway
    /// could not place it.
    Failed,
}

impl RunResult {
    pub const ALL: [RunResult; 6] = [
        RunResult::Ok,
        RunResult::WrongDigits,
        RunResult::NotHeard,
        RunResult::NotAnswered,
        RunResult::NotDelivered,
        RunResult::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunResult::Ok => "ok",
            RunResult::WrongDigits => "wrong_digits",
            RunResult::NotHeard => "not_heard",
            RunResult::NotAnswered => "not_answered",
            RunResult::NotDelivered => "not_delivered",
            RunResult::Failed => "failed",
        }
    }

    /// Everything but `ok` counts toward `fail_after`.
    pub fn is_failure(self) -> bool {
        self != RunResult::Ok
    }
}

impl fmt::Display for RunResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunResult {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunResult::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown canary result {s:?}"))
    }
}

/// Who hears a canary's call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FarEnd {
    /// The built-in test phone behind `[canary] answer_numbers` (this gateway or
    /// another instance on the same database).
    OwnPhone,
    /// A registered `[[qa.phones]]` softphone: only answer and delays are measured.
    QaPhone,
}

/// How the calling side's call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerEnd {
    /// A 200 OK came (the code was then played).
    Answered,
    /// Rang out, or the far end said busy, declined or "unavailable" (480, 486, 487,
    /// 600, 603).
    NotAnswered,
    /// Any other SIP error, no response at all, or the call could not be placed.
    Failed,
}

impl CallerEnd {
    /// From an attempt's final SIP status (`None`: no final response) and whether it was
    /// answered.
    pub fn from_sip(answered: bool, sip_code: Option<u16>, rang_out: bool) -> CallerEnd {
        if answered {
            return CallerEnd::Answered;
        }
        match sip_code {
            Some(480 | 486 | 487 | 600 | 603) => CallerEnd::NotAnswered,
            None if rang_out => CallerEnd::NotAnswered,
            _ => CallerEnd::Failed,
        }
    }
}

/// What the answering side heard, as matched against the run's code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// The run's code (matched by its keyed hash).
    Code,
    /// Other digits.
    Other,
    /// No reading of a code was recognised (or the answering side sent no report).
    Nothing,
}

/// The run's result. `arrival`: whether the call arrived at our answer number, and if
/// it did, what was heard.
pub fn classify(far: FarEnd, caller: &CallerEnd, arrival: Option<&Heard>) -> RunResult {
    match (far, caller) {
        (_, CallerEnd::Failed) => RunResult::Failed,
        (FarEnd::QaPhone, CallerEnd::Answered) => RunResult::Ok,
        (FarEnd::QaPhone, CallerEnd::NotAnswered) => RunResult::NotAnswered,
        (FarEnd::OwnPhone, CallerEnd::NotAnswered) => match arrival {
            Some(_) => RunResult::NotAnswered,
            None => RunResult::NotDelivered,
        },
        (FarEnd::OwnPhone, CallerEnd::Answered) => match arrival {
            None => RunResult::NotDelivered,
            Some(Heard::Code) => RunResult::Ok,
            Some(Heard::Other) => RunResult::WrongDigits,
            Some(Heard::Nothing) => RunResult::NotHeard,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for r in RunResult::ALL {
            assert_eq!(r.as_str().parse::<RunResult>(), Ok(r));
        }
        assert!("fine".parse::<RunResult>().is_err());
        assert!(!RunResult::Ok.is_failure());
        assert!(RunResult::NotDelivered.is_failure());
    }

    #[test]
    fn own_phone_results() {
        let own = FarEnd::OwnPhone;
        let answered = CallerEnd::Answered;
        assert_eq!(classify(own, &answered, Some(&Heard::Code)), RunResult::Ok);
        assert_eq!(
            classify(own, &answered, Some(&Heard::Other)),
            RunResult::WrongDigits
        );
        assert_eq!(
            classify(own, &answered, Some(&Heard::Nothing)),
            RunResult::NotHeard
        );
        // Answered by somebody else (a carrier announcement, a voicemail).
        assert_eq!(classify(own, &answered, None), RunResult::NotDelivered);
        let rang = CallerEnd::NotAnswered;
        assert_eq!(classify(own, &rang, None), RunResult::NotDelivered);
        assert_eq!(
            classify(own, &rang, Some(&Heard::Nothing)),
            RunResult::NotAnswered
        );
        // A SIP error is a failure whatever arrived.
        assert_eq!(
            classify(own, &CallerEnd::Failed, Some(&Heard::Code)),
            RunResult::Failed
        );
    }

    #[test]
    fn qa_phone_results_measure_the_answer_only() {
        let qa = FarEnd::QaPhone;
        assert_eq!(classify(qa, &CallerEnd::Answered, None), RunResult::Ok);
        assert_eq!(
            classify(qa, &CallerEnd::NotAnswered, None),
            RunResult::NotAnswered
        );
        assert_eq!(classify(qa, &CallerEnd::Failed, None), RunResult::Failed);
    }

    #[test]
    fn sip_endings() {
        assert_eq!(
            CallerEnd::from_sip(true, Some(200), false),
            CallerEnd::Answered
        );
        assert_eq!(
            CallerEnd::from_sip(false, Some(503), false),
            CallerEnd::Failed
        );
        assert_eq!(
            CallerEnd::from_sip(false, Some(404), false),
            CallerEnd::Failed
        );
        assert_eq!(
            CallerEnd::from_sip(false, Some(486), false),
            CallerEnd::NotAnswered
        );
        assert_eq!(
            CallerEnd::from_sip(false, Some(487), true),
            CallerEnd::NotAnswered
        );
        assert_eq!(
            CallerEnd::from_sip(false, None, true),
            CallerEnd::NotAnswered
        );
        assert_eq!(CallerEnd::from_sip(false, None, false), CallerEnd::Failed);
    }
}
