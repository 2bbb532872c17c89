//! `thespctl plan`

use crate::Context;
use crate::cli::PlanArgs;
use crate::error::{Error, Result};

pub async fn run(_args: &PlanArgs, _ctx: &Context) -> Result<u8> {
    Err(Error::usage("`thespctl plan` is not implemented yet"))
}
