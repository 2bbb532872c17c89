//! `thespctl down`

use crate::Context;
use crate::cli::DownArgs;
use crate::error::{Error, Result};

pub async fn run(_args: &DownArgs, _ctx: &Context) -> Result<u8> {
    Err(Error::usage("`thespctl down` is not implemented yet"))
}
