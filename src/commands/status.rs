//! `thespctl status`

use crate::Context;
use crate::cli::StatusArgs;
use crate::error::{Error, Result};

pub async fn run(_args: &StatusArgs, _ctx: &Context) -> Result<u8> {
    Err(Error::usage("`thespctl status` is not implemented yet"))
}
