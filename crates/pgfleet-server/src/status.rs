//! The one place where pgfleet's error enums become gRPC statuses.
//!
//! Invalid fields carry a `google.rpc.BadRequest` detail naming the field;
//! throttled logins and rate-limited calls carry a `google.rpc.RetryInfo`. Store failures are logged
//! here with their cause and returned without it. Messages are cut at
//! [`MAX_MESSAGE_BYTES`]: they quote what the client sent, and a status
//! travels in HTTP/2 headers that clients cap (16 KiB in hyper).

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::AuthError;
use crate::edge::RateLimitError;
use pgfleet_engine::RequestError;

/// Longest message (and field violation) a status carries. A name of 64 KiB
/// quoted back whole made the response's headers too large for the client,
/// which saw INTERNAL ("h2 protocol error") instead of the status (found by
/// the request fuzzer, `tests/it/fuzz_requests.rs`).
const MAX_MESSAGE_BYTES: usize = 1024;

/// `text`, cut at [`MAX_MESSAGE_BYTES`] (on a character boundary) with a note
/// saying how much was left out.
fn bounded(mut text: String) -> String {
    if text.len() > MAX_MESSAGE_BYTES {
        let total = text.len();
        let mut end = MAX_MESSAGE_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(&format!("… ({} more bytes not shown)", total - end));
    }
    text
}

/// INVALID_ARGUMENT with a `google.rpc.BadRequest` naming the field.
fn invalid_argument(message: String, field: String, description: String) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        message,
        ErrorDetails::with_bad_request_violation(bounded(field), bounded(description)),
    )
}

/// INTERNAL without the detail, which goes to the log.
fn internal(detail: &str) -> Status {
    tracing::error!(%detail, "internal error");
    Status::internal("internal error; see the server log")
}

/// tonic's own answers (codecs, `server::Grpc`, tonic-web) to a request body
/// that is not a well-formed gRPC message stream of the method's type:
/// INTERNAL, the code of a server fault, for what is the client's mistake. Matched on tonic 0.14's messages;
/// request-side ones only (response-side ones name the response).
const CLIENT_FRAMING_ERRORS: &[&str] = &[
    // A message that does not decode as the method's request type
    // (tonic-prost's codec, in every service: pgfleet's, health, reflection).
    "failed to decode Protobuf message",
    // A unary or server-streaming call whose body holds no message.
    "Missing request message",
    // A frame cut short by the end of the body.
    "Unexpected EOF decoding stream",
    // A compressed frame without grpc-encoding. gRPC's compression document
    // asks for INTERNAL here; pgfleet keeps INTERNAL for its own faults.
    "protocol error: received message with compressed-flag but no grpc-encoding",
    // A flag byte other than 0 and 1, or a body that does not decompress
    // ("…, while sending request").
    "protocol error: received message with invalid compression flag",
    "Error decompressing",
    // tonic-web turning the browser's body into frames: base64 that does not
    // decode, a base64 body cut short, trailers in a request. Its
    // response-side errors come after the headers, so never reach here.
    "tonic-web: ",
];

/// `response` with INVALID_ARGUMENT instead of INTERNAL when tonic refused
/// the request's framing (found by the grpc-web and request fuzzers). Such
/// refusals are trailers-only responses, so the status is in the headers.
pub(crate) fn correct_framing_status(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let framing_error = Status::from_header_map(response.headers()).is_some_and(|status| {
        status.code() == Code::Internal
            && CLIENT_FRAMING_ERRORS
                .iter()
                .any(|prefix| status.message().starts_with(prefix))
    });
    if framing_error {
        response.headers_mut().insert(
            "grpc-status",
            http::HeaderValue::from(Code::InvalidArgument as i32),
        );
    }
    response
}

/// The status of a request the engine refused or could not serve.
pub(crate) fn request_status(error: RequestError) -> Status {
    {
        let message = bounded(error.to_string());
        match error {
            RequestError::InvalidArgument {
                field,
                message: description,
            } => invalid_argument(message, field, description),
            RequestError::NotFound(_) => Status::not_found(message),
            RequestError::AlreadyExists(_) => Status::already_exists(message),
            RequestError::PermissionDenied(_) => Status::permission_denied(message),
            RequestError::FailedPrecondition(_) => Status::failed_precondition(message),
            RequestError::Aborted(_) => Status::aborted(message),
            RequestError::ResourceExhausted(_) => Status::resource_exhausted(message),
            RequestError::Unavailable(_) => Status::unavailable(message),
            RequestError::Internal(detail) => internal(&detail),
        }
    }
}

impl From<AuthError> for Status {
    fn from(error: AuthError) -> Self {
        let message = bounded(error.to_string());
        match error {
            AuthError::Unauthenticated(_) => Status::unauthenticated(message),
            AuthError::PermissionDenied(_) => Status::permission_denied(message),
            AuthError::InvalidArgument {
                field,
                message: description,
            } => invalid_argument(message, field, description),
            AuthError::AlreadyExists { .. } => Status::already_exists(message),
            AuthError::NotFound(_) => Status::not_found(message),
            AuthError::FailedPrecondition(_) => Status::failed_precondition(message),
            AuthError::RateLimited { retry_after, .. } => Status::with_error_details(
                Code::ResourceExhausted,
                message,
                ErrorDetails::with_retry_info(Some(retry_after)),
            ),
            AuthError::SessionStoreUnavailable(cause) => {
                tracing::warn!(error = %cause, "session store unavailable");
                Status::unavailable(message)
            }
            AuthError::UserStoreUnavailable(cause) => {
                tracing::warn!(error = %cause, "user store unavailable");
                Status::unavailable(message)
            }
            AuthError::Internal(detail) => internal(&detail),
        }
    }
}

impl From<RateLimitError> for Status {
    fn from(error: RateLimitError) -> Self {
        let message = bounded(error.to_string());
        match error {
            RateLimitError::Exceeded { retry_after, .. } => Status::with_error_details(
                Code::ResourceExhausted,
                message,
                ErrorDetails::with_retry_info(Some(retry_after)),
            ),
            RateLimitError::StoreUnavailable(cause) => {
                tracing::warn!(error = %cause, "rate limit store unavailable");
                Status::unavailable(message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn invalid_argument_names_the_field_in_message_and_details() {
        let status = Status::from(AuthError::invalid(
            "allowed_targets[1].cloud",
            "unknown cloud \"azr\"",
        ));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "allowed_targets[1].cloud: unknown cloud \"azr\""
        );
        let details = status.get_error_details();
        let violations = &details
            .bad_request()
            .expect("bad request detail")
            .field_violations;
        assert_eq!(violations[0].field, "allowed_targets[1].cloud");
    }

    #[test]
    fn throttling_carries_a_retry_hint() {
        let status = Status::from(AuthError::RateLimited {
            scope: "username",
            retry_after: Duration::from_secs(42),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("retry in 42s"), "{}", status.message());
        let retry = status
            .get_error_details()
            .retry_info()
            .cloned()
            .expect("retry info");
        assert_eq!(retry.retry_delay, Some(Duration::from_secs(42)));
    }

    #[test]
    fn a_long_message_is_cut_on_a_character_boundary() {
        let name = "é".repeat(40_000);
        let status = request_status(RequestError::NotFound(format!(
            "database \"{name}\" is not configured"
        )));
        assert_eq!(status.code(), Code::NotFound);
        assert!(
            status.message().len() < MAX_MESSAGE_BYTES + 64,
            "{} bytes",
            status.message().len()
        );
        assert!(
            status.message().ends_with("more bytes not shown)"),
            "{}",
            status.message()
        );
        let status = request_status(RequestError::InvalidArgument {
            field: "database".to_owned(),
            message: name,
        });
        let details = status.get_error_details();
        let violation = &details
            .bad_request()
            .expect("bad request detail")
            .field_violations[0];
        assert!(violation.description.len() < MAX_MESSAGE_BYTES + 64);
    }

    #[test]
    fn framing_errors_of_the_request_become_invalid_argument() {
        for (status, expected) in [
            (
                Status::internal("Missing request message."),
                Code::InvalidArgument,
            ),
            (
                Status::internal("failed to decode Protobuf message: invalid tag value: 0"),
                Code::InvalidArgument,
            ),
            (
                Status::internal("Unexpected EOF decoding stream."),
                Code::InvalidArgument,
            ),
            (
                Status::internal("tonic-web: malformed base64 request"),
                Code::InvalidArgument,
            ),
            (
                Status::internal("internal error; see the server log"),
                Code::Internal,
            ),
            (Status::not_found("Missing request message."), Code::NotFound),
        ] {
            let corrected = correct_framing_status(status.clone().into_http());
            let code = Status::from_header_map(corrected.headers()).map(|s| s.code());
            assert_eq!(code, Some(expected), "{status:?}");
        }
    }

    #[test]
    fn internal_details_stay_in_the_log() {
        let status = Status::from(AuthError::Internal("relation pgfleet.users is broken".to_owned()));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("pgfleet.users"));
    }
}
