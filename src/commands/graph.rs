//! `thespctl graph`

use crate::Context;
use crate::cli::GraphArgs;
use crate::error::{Error, Result};

pub async fn run(_args: &GraphArgs, _ctx: &Context) -> Result<u8> {
    Err(Error::usage("`thespctl graph` is not implemented yet"))
}
