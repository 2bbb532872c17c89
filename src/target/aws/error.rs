//! What can go wrong on AWS, said so that the user knows what to do next.
//!
//! AWS errors are classified by their typed variant or their error *code* (`ProvideErrorMetadata::code`),
//! never by their message text. The one exception is documented where it happens (a change set with no
//! changes is reported only through its status reason).

use std::error::Error as StdError;
use std::time::Duration;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_cloudformation::error::{ProvideErrorMetadata, SdkError};
use tokio_util::sync::CancellationToken;

use crate::error::exit;

type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Error codes AWS services use for throttling (CloudFormation says `Throttling`, ECS and SSM
/// `ThrottlingException`).
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "SlowDown",
];
const ACCESS_DENIED_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnauthorizedAccess",
    "AuthorizationError",
    "NotAuthorized",
];
const EXPIRED_CODES: &[&str] = &[
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
    "TokenRefreshRequired",
];
const REJECTED_CREDENTIALS_CODES: &[&str] = &[
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "InvalidSignatureException",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "AuthFailure",
    "InvalidAccessKeyId",
];

#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    // ---- configuration and credentials (exit 2) ----
    #[error(
        "no AWS region is configured: pass --region, set `aws.region` in the manifest, or set AWS_REGION \
         (or a region in your AWS profile)"
    )]
    NoRegion,

    #[error(
        "no AWS credentials were found{}: run `aws configure` (or `aws sso login`), set AWS_ACCESS_KEY_ID and \
         AWS_SECRET_ACCESS_KEY, or pass --profile NAME",
        profile_suffix(.profile)
    )]
    NoCredentials {
        profile: Option<String>,
        #[source]
        source: BoxError,
    },

    #[error(
        "could not load AWS credentials{}: fix the profile in ~/.aws/config, or if it uses SSO run \
         `aws sso login{}` and retry",
        profile_suffix(.profile),
        profile_flag(.profile)
    )]
    CredentialsProvider {
        profile: Option<String>,
        #[source]
        source: BoxError,
    },

    #[error(
        "your AWS credentials have expired ({operation}): refresh them (e.g. `aws sso login`, or new \
         temporary keys) and retry"
    )]
    ExpiredCredentials {
        operation: &'static str,
        #[source]
        source: BoxError,
    },

    #[error(
        "AWS rejected the credentials ({operation}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / \
         AWS_SESSION_TOKEN or the --profile you use"
    )]
    RejectedCredentials {
        operation: &'static str,
        #[source]
        source: BoxError,
    },

    #[error(
        "access denied: your AWS identity may not call {operation}{}: grant that permission to the user or \
         role (or use another --profile)",
        on_subject(.subject)
    )]
    AccessDenied {
        operation: &'static str,
        subject: Option<String>,
        #[source]
        source: BoxError,
    },

    #[error(
        "could not reach AWS ({operation}) in region `{region}`: check that the region name is right \
         (--region), your network, and --endpoint-url / AWS_ENDPOINT_URL if you set them"
    )]
    Unreachable {
        operation: &'static str,
        region: String,
        #[source]
        source: BoxError,
    },

    // ---- bad input (exit 2) ----
    #[error(
        "the manifest {} has no `aws.image`: set it to the agent's container image \
         (e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/thespian-agent:1)",
        .manifest
    )]
    NoImage { manifest: String },

    #[error(
        "thespian `{thespian}`: its compiled behaviour is {bytes} bytes of JSON, more than the {limit} bytes a \
         CloudFormation parameter can hold: simplify its behaviour (fewer or shorter steps) to deploy it on AWS"
    )]
    ConfigTooLarge {
        thespian: String,
        bytes: usize,
        limit: usize,
    },

    #[error(
        "stack name `{stack}` is not valid for CloudFormation (a letter, then letters, digits and hyphens, at \
         most 128 characters): rename the fleet or thespian"
    )]
    StackName { stack: String },

    #[error(transparent)]
    Parameter(#[from] super::templates::ParameterError),

    #[error(
        "stack `{stack}` exists but was not made by thespctl for fleet `{fleet}` (its tags are not \
         thespctl:fleet={fleet}): rename the fleet or delete that stack"
    )]
    ForeignStack { stack: String, fleet: String },

    #[error("{what}: pass --yes to go ahead without a terminal to confirm on")]
    NeedsConfirmation { what: String },

    #[error(
        "stack `{stack}` is UPDATE_ROLLBACK_FAILED (a rollback that could not finish): rerun with \
         --continue-rollback to resume the rollback, then the update"
    )]
    NeedsContinueRollback { stack: String },

    #[error(
        "nothing of fleet `{fleet}` is deployed in region `{region}` (no stack is tagged thespctl:fleet={fleet}); check --region, or run `thespctl up --target aws`"
    )]
    NotDeployed { fleet: String, region: String },

    #[error("no thespian `{name}` in fleet `{fleet}` on AWS; deployed: {}", list_or_none(.known))]
    UnknownThespian {
        name: String,
        fleet: String,
        known: Vec<String>,
    },

    #[error(
        "fleet `{fleet}` has no load balancer: add `aws.alb` to the manifest and run `thespctl up`, or use \
         --via tunnel"
    )]
    NoAlb { fleet: String },

    #[error("--via direct reaches local processes only: on AWS use --via alb or --via tunnel (or auto)")]
    ViaDirect,

    #[error(
        "the template {name} is {bytes} bytes, more than the {limit} bytes CloudFormation accepts inline"
    )]
    TemplateTooLarge {
        name: &'static str,
        bytes: usize,
        limit: usize,
    },

    // ---- the run failed (exit 1) ----
    #[error("{operation} failed{}", on_subject(.subject))]
    Api {
        operation: &'static str,
        subject: Option<String>,
        #[source]
        source: BoxError,
    },

    #[error("{operation}{} is still throttled after {attempts} attempts; retry later or lower --parallel", on_subject(.subject))]
    Throttled {
        operation: &'static str,
        subject: Option<String>,
        attempts: u32,
        #[source]
        source: BoxError,
    },

    #[error("the change set for stack `{stack}` failed: {reason}")]
    ChangeSetFailed { stack: String, reason: String },

    #[error("{}", render_failures(.failures))]
    Failed { failures: Vec<Failure> },

    #[error(
        "stack `{stack}` has no output `{output}`: it was not made by this version of thespctl's templates; \
         run `thespctl up` to update it"
    )]
    MissingOutput { stack: String, output: String },

    #[error("gave up waiting after {}; still in progress (not cancelled): {}", humantime::format_duration(std::time::Duration::from_secs(.waited.as_secs())), .still_running.join(", "))]
    Timeout {
        waited: Duration,
        still_running: Vec<String>,
    },

    #[error("nothing was changed: the confirmation was declined")]
    Declined,
}

/// One stack or service that failed, with its root cause lines (already trimmed, never parsed).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Failure {
    /// `stack demo-gilbert` or `service gilbert`.
    pub subject: String,
    /// What happened, e.g. `UPDATE_ROLLBACK_COMPLETE` or `deployment rolled back by the circuit breaker`.
    pub summary: String,
    /// Root cause lines, oldest first.
    pub causes: Vec<String>,
}

fn render_failures(failures: &[Failure]) -> String {
    let mut out = match failures {
        [one] => format!("{} failed: {}", one.subject, one.summary),
        many => format!("{} deployments failed", many.len()),
    };
    for f in failures {
        if failures.len() > 1 {
            out.push_str(&format!("\n  {} failed: {}", f.subject, f.summary));
        }
        for (j, cause) in f.causes.iter().enumerate() {
            let label = if j == 0 { "root cause" } else { "then" };
            out.push_str(&format!("\n    {label}: {cause}"));
        }
    }
    out
}

fn profile_suffix(profile: &Option<String>) -> String {
    profile
        .as_deref()
        .map(|p| format!(" for profile `{p}`"))
        .unwrap_or_default()
}

fn profile_flag(profile: &Option<String>) -> String {
    profile
        .as_deref()
        .map(|p| format!(" --profile {p}"))
        .unwrap_or_default()
}

fn on_subject(subject: &Option<String>) -> String {
    subject.as_deref().map(|s| format!(" on {s}")).unwrap_or_default()
}

fn list_or_none(known: &[String]) -> String {
    if known.is_empty() {
        "none".to_string()
    } else {
        known.join(", ")
    }
}

impl AwsError {
    pub fn exit_code(&self) -> u8 {
        use AwsError::*;
        match self {
            NoRegion
            | NoCredentials { .. }
            | CredentialsProvider { .. }
            | ExpiredCredentials { .. }
            | RejectedCredentials { .. }
            | AccessDenied { .. }
            | Unreachable { .. }
            | NoImage { .. }
            | ConfigTooLarge { .. }
            | ForeignStack { .. }
            | NeedsConfirmation { .. }
            | NeedsContinueRollback { .. }
            | NotDeployed { .. }
            | UnknownThespian { .. }
            | NoAlb { .. }
            | ViaDirect
            | StackName { .. }
            | Parameter(_)
            | TemplateTooLarge { .. } => exit::USAGE,
            Api { .. }
            | Throttled { .. }
            | ChangeSetFailed { .. }
            | Failed { .. }
            | MissingOutput { .. }
            | Timeout { .. }
            | Declined => exit::FAILED,
        }
    }

    /// Whether waiting and calling again may help.
    pub fn is_throttling(&self) -> bool {
        matches!(self, AwsError::Throttled { .. })
    }
}

/// Where a call was made, for messages: the operation and what it was about.
#[derive(Debug, Clone)]
pub struct CallSite<'a> {
    pub operation: &'static str,
    pub subject: Option<String>,
    pub region: &'a str,
    pub profile: Option<&'a str>,
}

impl<'a> CallSite<'a> {
    pub fn new(operation: &'static str, region: &'a str) -> Self {
        CallSite {
            operation,
            subject: None,
            region,
            profile: None,
        }
    }

    pub fn on(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    pub fn profile(mut self, profile: Option<&'a str>) -> Self {
        self.profile = profile;
        self
    }
}

/// The error code of an SDK error, if the service sent one.
pub fn error_code<E, R>(err: &SdkError<E, R>) -> Option<&str>
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::ServiceError(e) => e.err().code(),
        _ => None,
    }
}

/// Turns an SDK error into an [`AwsError`] that says what to do.
pub fn classify<E, R>(site: &CallSite<'_>, err: SdkError<E, R>) -> AwsError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    R: RawResponse + std::fmt::Debug + Send + Sync + 'static,
{
    let operation = site.operation;
    let subject = site.subject.clone();

    // Credentials that could not be loaded surface as a failure to dispatch the request, with the
    // provider's typed error somewhere in the source chain.
    if let Some(cred) = find_in_chain::<CredentialsError>(&err) {
        let profile = site.profile.map(str::to_owned);
        let source: BoxError = Box::new(SourceText(crate::error::one_line(cred)));
        return match cred {
            CredentialsError::CredentialsNotLoaded(_) => AwsError::NoCredentials { profile, source },
            _ => AwsError::CredentialsProvider { profile, source },
        };
    }

    // Network-level failures: DNS (a wrong region name gives a host that does not exist), refused
    // connections, timeouts.
    let network = match &err {
        SdkError::DispatchFailure(d) => d.is_io() || d.is_timeout(),
        SdkError::TimeoutError(_) => true,
        _ => false,
    };
    if network {
        return AwsError::Unreachable {
            operation,
            region: site.region.to_string(),
            source: Box::new(SourceText(crate::error::one_line(&err))),
        };
    }

    let code = error_code(&err).map(str::to_owned);
    let source = boxed(err, code.as_deref());
    match code.as_deref() {
        Some(c) if THROTTLING_CODES.contains(&c) => AwsError::Throttled {
            operation,
            subject,
            attempts: 1,
            source,
        },
        Some(c) if ACCESS_DENIED_CODES.contains(&c) => AwsError::AccessDenied {
            operation,
            subject,
            source,
        },
        Some(c) if EXPIRED_CODES.contains(&c) => AwsError::ExpiredCredentials { operation, source },
        Some(c) if REJECTED_CREDENTIALS_CODES.contains(&c) => {
            AwsError::RejectedCredentials { operation, source }
        }
        _ => AwsError::Api {
            operation,
            subject,
            source,
        },
    }
}

/// Keeps what the service said (`Code: message`) as the `caused by:` line, without the SDK's
/// wrapper noise ("service error"). A response the SDK could not make sense of (no error code: a proxy's
/// HTML page, another protocol's error) is quoted with its HTTP status, so the cause is not lost.
fn boxed<E, R>(err: SdkError<E, R>, code: Option<&str>) -> BoxError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    R: RawResponse + std::fmt::Debug + Send + Sync + 'static,
{
    let raw = err.raw_response().and_then(RawResponse::describe);
    match err {
        SdkError::ServiceError(service) if code.is_some() => {
            let e = service.into_err();
            let message = e.message().map(str::trim).unwrap_or("").to_string();
            let code = code.unwrap_or_default();
            if message.is_empty() {
                Box::new(SourceText(code.to_string()))
            } else {
                Box::new(SourceText(format!("{code}: {message}")))
            }
        }
        other => match raw {
            // The parser's complaint ("error parsing XML") says less than the response itself.
            Some(raw) => Box::new(SourceText(format!("the service answered {raw}"))),
            None => Box::new(SourceText(crate::error::one_line(&other))),
        },
    }
}

/// What can be said about a raw HTTP response in an error message.
pub trait RawResponse {
    fn describe(&self) -> Option<String>;
}

impl RawResponse for aws_smithy_runtime_api::http::Response {
    fn describe(&self) -> Option<String> {
        let body = self.body().bytes()?;
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let mut shown: String = text.chars().take(300).collect();
        if shown.len() < text.len() {
            shown.push('…');
        }
        Some(format!("HTTP {}: {shown}", self.status().as_u16()))
    }
}

/// Tests build SDK errors without a response.
impl RawResponse for () {
    fn describe(&self) -> Option<String> {
        None
    }
}

fn find_in_chain<'e, T: StdError + 'static>(err: &'e (dyn StdError + 'static)) -> Option<&'e T> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// A message that stands in for an error we could not keep as is (SDK errors carry the raw response).
#[derive(Debug)]
pub(crate) struct SourceText(pub(crate) String);

impl std::fmt::Display for SourceText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for SourceText {}

/// Backoff for throttled calls: exponential with full jitter, so parallel stacks spread out instead of
/// retrying in lock-step.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub max_attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(400),
            cap: Duration::from_secs(20),
            max_attempts: 8,
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt + 1` (attempt counts from 1): uniform in `[0, min(cap, base·2^n))`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.min(16));
        let ceiling = exp.min(self.cap);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(fastrand::u64(0..millis))
    }
}

/// Calls `f` until it succeeds, fails with anything but throttling, or `backoff.max_attempts` is
/// reached. Stops early (returning the last error) when `cancel` fires.
pub async fn with_backoff<T, F, Fut>(
    backoff: Backoff,
    cancel: &CancellationToken,
    mut f: F,
) -> Result<T, AwsError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, AwsError>>,
{
    let mut attempt = 1;
    loop {
        match f().await {
            Err(AwsError::Throttled {
                operation,
                subject,
                source,
                ..
            }) => {
                if attempt >= backoff.max_attempts || cancel.is_cancelled() {
                    return Err(AwsError::Throttled {
                        operation,
                        subject,
                        attempts: attempt,
                        source,
                    });
                }
                tracing::debug!(operation, attempt, "throttled; backing off");
                tokio::select! {
                    () = tokio::time::sleep(backoff.delay(attempt)) => {}
                    () = cancel.cancelled() => {
                        return Err(AwsError::Throttled { operation, subject, attempts: attempt, source });
                    }
                }
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_cloudformation::operation::describe_stacks::DescribeStacksError;
    use aws_smithy_types::error::ErrorMetadata;

    fn service_error(code: &str, message: &str) -> SdkError<DescribeStacksError, ()> {
        let meta = ErrorMetadata::builder().code(code).message(message).build();
        SdkError::service_error(DescribeStacksError::generic(meta), ())
    }

    /// Millisecond delays: the schedule is tested by `backoff_delays_are_jittered_and_capped`.
    fn quick() -> Backoff {
        Backoff {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(4),
            max_attempts: 8,
        }
    }

    fn site() -> CallSite<'static> {
        CallSite::new("cloudformation:DescribeStacks", "eu-west-1").on("stack demo")
    }

    #[test]
    fn throttling_is_recognised_by_code_not_message() {
        let e = classify(&site(), service_error("Throttling", "Rate exceeded"));
        assert!(e.is_throttling(), "{e:?}");
        let e = classify(&site(), service_error("ThrottlingException", "anything"));
        assert!(e.is_throttling(), "{e:?}");
        // The message alone does not make an error throttling.
        let e = classify(&site(), service_error("ValidationError", "Rate exceeded"));
        assert!(!e.is_throttling(), "{e:?}");
    }

    #[test]
    fn credential_and_permission_codes_get_their_own_sentence() {
        let e = classify(
            &site(),
            service_error("AccessDenied", "User: arn:... is not authorized"),
        );
        assert!(matches!(e, AwsError::AccessDenied { .. }));
        assert_eq!(e.exit_code(), exit::USAGE);
        let text = e.to_string();
        assert!(
            text.contains("cloudformation:DescribeStacks") && text.contains("grant"),
            "{text}"
        );

        let e = classify(
            &site(),
            service_error(
                "ExpiredToken",
                "The security token included in the request is expired",
            ),
        );
        assert!(matches!(e, AwsError::ExpiredCredentials { .. }));
        assert!(e.to_string().contains("expired"));

        let e = classify(&site(), service_error("InvalidClientTokenId", "bad"));
        assert!(matches!(e, AwsError::RejectedCredentials { .. }));
    }

    #[test]
    fn other_service_errors_keep_code_and_message_as_the_cause() {
        let e = classify(
            &site(),
            service_error("ValidationError", "Template format error  "),
        );
        assert!(matches!(e, AwsError::Api { .. }));
        assert_eq!(e.exit_code(), exit::FAILED);
        assert_eq!(
            e.to_string(),
            "cloudformation:DescribeStacks failed on stack demo"
        );
        let cause = e.source().map(ToString::to_string);
        assert_eq!(cause.as_deref(), Some("ValidationError: Template format error"));
    }

    #[test]
    fn backoff_delays_are_jittered_and_capped() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(800),
            max_attempts: 5,
        };
        for attempt in 1..10 {
            let d = b.delay(attempt);
            assert!(d <= Duration::from_millis(800), "{d:?}");
        }
        // Full jitter: not every delay is the same.
        let samples: std::collections::BTreeSet<_> = (0..50).map(|_| b.delay(3)).collect();
        assert!(samples.len() > 1);
    }

    #[tokio::test]
    async fn throttled_calls_are_retried_then_succeed() {
        let cancel = CancellationToken::new();
        let mut calls = 0;
        let result = with_backoff(quick(), &cancel, || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(classify(&site(), service_error("Throttling", "Rate exceeded")))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result.ok(), Some(3));
    }

    #[tokio::test]
    async fn retries_stop_after_max_attempts_and_say_so() {
        let cancel = CancellationToken::new();
        let backoff = Backoff {
            max_attempts: 3,
            ..quick()
        };
        let result: Result<(), _> = with_backoff(backoff, &cancel, || async {
            Err(classify(&site(), service_error("Throttling", "Rate exceeded")))
        })
        .await;
        let err = result.expect_err("still throttled");
        assert!(matches!(err, AwsError::Throttled { attempts: 3, .. }), "{err:?}");
        assert!(err.to_string().contains("--parallel"));
    }

    #[tokio::test]
    async fn non_throttling_errors_are_not_retried() {
        let cancel = CancellationToken::new();
        let mut calls = 0;
        let result: Result<(), _> = with_backoff(quick(), &cancel, || {
            calls += 1;
            async { Err(classify(&site(), service_error("ValidationError", "no"))) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls, 1);
    }

    #[test]
    fn failures_render_root_causes_under_each_subject() {
        let e = AwsError::Failed {
            failures: vec![Failure {
                subject: "stack demo-gilbert".into(),
                summary: "UPDATE_ROLLBACK_COMPLETE".into(),
                causes: vec!["TaskDefinition (AWS::ECS::TaskDefinition) CREATE_FAILED: boom".into()],
            }],
        };
        assert_eq!(
            e.to_string(),
            "stack demo-gilbert failed: UPDATE_ROLLBACK_COMPLETE\n    root cause: TaskDefinition (AWS::ECS::TaskDefinition) CREATE_FAILED: boom"
        );
    }
}
