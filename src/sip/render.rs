//! Rendering the requests and responses we send, through rsip's types, with the reason
//! phrases of RFC 3261 §21 (and the SIP extensions that define more codes): peers and
//! people reading a trace see `401 Unauthorized`, never `401 Unknown`.

use rsip::headers::UntypedHeader;
use rsip::Header;

/// Renders a request through rsip's types.
pub(crate) fn render_request(
    method: rsip::Method,
    uri: &rsip::Uri,
    mut headers: Vec<Header>,
    body: &[u8],
) -> Vec<u8> {
    headers.push(rsip::headers::ContentLength::new(body.len().to_string()).into());
    let req = rsip::Request {
        method,
        uri: uri.clone(),
        version: rsip::Version::V2,
        headers: headers_from(headers),
        body: body.to_vec(),
    };
    req.to_string().into_bytes()
}

/// Renders a response through rsip's types, with the RFC reason phrase.
pub(crate) fn render_response(status: u16, mut headers: Vec<Header>, body: &[u8]) -> Vec<u8> {
    headers.push(rsip::headers::ContentLength::new(body.len().to_string()).into());
    let resp = rsip::Response {
        status_code: rsip::StatusCode::from(status),
        version: rsip::Version::V2,
        headers: headers_from(headers),
        body: body.to_vec(),
    };
    // rsip prints enum names as reason phrases ("CallTransactionDoesNotExist").
    let text = resp.to_string();
    let rest = text.split_once("\r\n").map_or("", |(_, r)| r);
    format!("SIP/2.0 {status} {}\r\n{rest}", reason_phrase(status)).into_bytes()
}

/// The reason phrase of `status`: RFC 3261 §21, then the extensions' codes (RFC 3262,
/// 3265, 3329, 3903, 4028, 4412, 4474, 5079, 5360, 5393, 5626, 5839, 6086, 8224, 8599);
/// an unlisted code gets its class's phrase.
pub(crate) fn reason_phrase(status: u16) -> &'static str {
    known_phrase(status).unwrap_or(match status {
        100..=199 => "Session Progress",
        200..=299 => "OK",
        300..=399 => "Redirection",
        400..=499 => "Request Failure",
        500..=599 => "Server Failure",
        _ => "Global Failure",
    })
}

fn known_phrase(status: u16) -> Option<&'static str> {
    Some(match status {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        199 => "Early Dialog Terminated",
        200 => "OK",
        202 => "Accepted",
        204 => "No Notification",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        305 => "Use Proxy",
        380 => "Alternative Service",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        412 => "Conditional Request Failed",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        417 => "Unknown Resource-Priority",
        420 => "Bad Extension",
        421 => "Extension Required",
        422 => "Session Interval Too Small",
        423 => "Interval Too Brief",
        424 => "Bad Location Information",
        428 => "Use Identity Header",
        429 => "Provide Referrer Identity",
        430 => "Flow Failed",
        433 => "Anonymity Disallowed",
        436 => "Bad Identity Info",
        437 => "Unsupported Credential",
        438 => "Invalid Identity Header",
        439 => "First Hop Lacks Outbound Support",
        440 => "Max-Breadth Exceeded",
        469 => "Bad Info Package",
        470 => "Consent Needed",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        485 => "Ambiguous",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        489 => "Bad Event",
        491 => "Request Pending",
        493 => "Undecipherable",
        494 => "Security Agreement Required",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        555 => "Push Notification Service Not Supported",
        580 => "Precondition Failure",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        607 => "Unwanted",
        608 => "Rejected",
        _ => return None,
    })
}

fn headers_from(list: Vec<Header>) -> rsip::Headers {
    let mut h = rsip::Headers::default();
    h.extend(list);
    h
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_status_line_has_its_rfc_phrase() {
        for (status, phrase) in [
            (401, "Unauthorized"),
            (423, "Interval Too Brief"),
            (405, "Method Not Allowed"),
            (481, "Call/Transaction Does Not Exist"),
            (430, "Flow Failed"),
            (299, "OK"),
            (499, "Request Failure"),
        ] {
            let text = String::from_utf8(render_response(status, Vec::new(), b"")).unwrap();
            assert_eq!(
                text.split("\r\n").next().unwrap(),
                format!("SIP/2.0 {status} {phrase}")
            );
        }
    }

    /// No status the user agent can send renders "Unknown" (the phrase the old table
    /// fell back to for 401 and 423).
    #[test]
    fn no_phrase_is_unknown() {
        for status in 100..700 {
            assert_ne!(reason_phrase(status), "Unknown", "{status}");
        }
    }
}
