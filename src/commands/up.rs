//! `thespctl up`

use crate::Context;
use crate::cli::UpArgs;
use crate::error::{Error, Result};

pub async fn run(_args: &UpArgs, _ctx: &Context) -> Result<u8> {
    Err(Error::usage("`thespctl up` is not implemented yet"))
}
