//! The page's files, compiled into the binary so `kura serve` needs nothing
//! beside it at run time.

pub const INDEX_HTML: &str = include_str!("../../assets/index.html");
pub const APP_JS: &str = include_str!("../../assets/app.js");
pub const STYLE_CSS: &str = include_str!("../../assets/style.css");
