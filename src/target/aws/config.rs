//! One `SdkConfig` per run, built from the global flags the standard way (profiles, SSO, env, IMDS).

use aws_config::{BehaviorVersion, Region, SdkConfig};

use crate::cli::GlobalArgs;

/// Builds the AWS configuration every client of this run shares.
///
/// Precedence: `--region` > the manifest's `aws.region` > the profile/environment. `--endpoint-url`
/// overrides every service's endpoint; without it, aws-config honours `AWS_ENDPOINT_URL` and
/// `AWS_ENDPOINT_URL_<SERVICE>` (e.g. `AWS_ENDPOINT_URL_SSM`) by itself.
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
