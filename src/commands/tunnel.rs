//! `thespctl tunnel`

use crate::Context;
use crate::cli::TunnelArgs;
use crate::error::{Error, Result};

pub async fn run(_args: &TunnelArgs, _ctx: &Context) -> Result<u8> {
    Err(Error::usage("`thespctl tunnel` is not implemented yet"))
}
