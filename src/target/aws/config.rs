//! One `SdkConfig` per run, built from the global flags the standard way (profiles, SSO, env, IMDS).

use aws_config::{BehaviorVersion, Region, SdkConfig};

use super::error::AwsError;
use crate::cli::GlobalArgs;

/// Builds the AWS configuration every client of this run shares.
///
/// Precedence: `--region` > the manifest's `aws.region` > the profile/environment (`AWS_REGION`,
/// `AWS_DEFAULT_REGION`, the profile's `region`). `--profile` (or `AWS_PROFILE`) picks the profile,
/// including SSO profiles (`aws sso login` first). `--endpoint-url` overrides every service's endpoint;
/// without it, aws-config honours `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_<SERVICE>` (e.g.
/// `AWS_ENDPOINT_URL_CLOUDFORMATION`, `AWS_ENDPOINT_URL_SSM`) and `endpoint_url` in the profile by itself.
pub async fn load(global: &GlobalArgs, manifest_region: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(profile) = &global.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(region) = global.region.as_deref().or(manifest_region) {
        loader = loader.region(Region::new(region.to_string()));
    }
    if let Some(url) = &global.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

/// [`load`], then insists on a region: every AWS call needs one (the endpoint and the signature depend
/// on it), so a missing region is reported once, up front, with the ways to set it.
pub async fn load_checked(global: &GlobalArgs, manifest_region: Option<&str>) -> Result<SdkConfig, AwsError> {
    let sdk = load(global, manifest_region).await;
    region_of(&sdk)?;
    Ok(sdk)
}

/// The region in effect.
pub fn region_of(sdk: &SdkConfig) -> Result<String, AwsError> {
    match sdk.region() {
        Some(region) if !region.as_ref().trim().is_empty() => Ok(region.to_string()),
        _ => Err(AwsError::NoRegion),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::OutputFormat;

    fn global(region: Option<&str>) -> GlobalArgs {
        GlobalArgs {
            file: "thespian.yaml".into(),
            target: None,
            output: OutputFormat::Table,
            profile: None,
            region: region.map(str::to_owned),
            endpoint_url: Some("http://127.0.0.1:9".into()),
        }
    }

    #[tokio::test]
    async fn the_flag_beats_the_manifest_region() {
        let sdk = load(&global(Some("eu-west-3")), Some("us-east-2")).await;
        assert_eq!(region_of(&sdk).ok().as_deref(), Some("eu-west-3"));
        let sdk = load(&global(None), Some("us-east-2")).await;
        assert_eq!(region_of(&sdk).ok().as_deref(), Some("us-east-2"));
    }

    #[test]
    fn a_missing_region_says_how_to_set_one() {
        let sdk = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .build();
        let err = region_of(&sdk).expect_err("no region");
        let text = err.to_string();
        assert!(
            text.contains("--region") && text.contains("aws.region") && text.contains("AWS_REGION"),
            "{text}"
        );
        assert_eq!(err.exit_code(), crate::error::exit::USAGE);
    }
}
