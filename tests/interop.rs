//! The mirror scenarios against third-party servers: vsftpd (LIST only, no
//! MLSD) and pyftpdlib (MLSD, MFMT). Skipped with a message when a server is
//! not installed, unless FTPSYNC_REQUIRE_INTEROP=1 (CI), where that fails.

use crate::mirror;
use crate::support::harness::Env;
use crate::support::servers::{start_pyftpdlib, start_vsftpd};

macro_rules! interop {
    ($name:ident, $start:ident, $scenario:path) => {
        #[test]
        fn $name() {
            let Some(server) = $start() else { return };
            $scenario(&Env::external(server));
        }
    };
}

interop!(
    vsftpd_push_and_rerun_is_noop,
    start_vsftpd,
    mirror::push_and_rerun_is_noop
);
interop!(
    vsftpd_push_incremental,
    start_vsftpd,
    mirror::push_incremental
);
interop!(vsftpd_push_filters, start_vsftpd, mirror::push_filters);
interop!(
    vsftpd_pull_incremental,
    start_vsftpd,
    mirror::pull_incremental
);
interop!(
    vsftpd_push_detects_drift,
    start_vsftpd,
    mirror::push_detects_drift
);
interop!(
    pyftpdlib_push_and_rerun_is_noop,
    start_pyftpdlib,
    mirror::push_and_rerun_is_noop
);
interop!(
    pyftpdlib_push_incremental,
    start_pyftpdlib,
    mirror::push_incremental
);
interop!(
    pyftpdlib_push_filters,
    start_pyftpdlib,
    mirror::push_filters
);
interop!(
    pyftpdlib_pull_incremental,
    start_pyftpdlib,
    mirror::pull_incremental
);
interop!(
    pyftpdlib_push_detects_drift,
    start_pyftpdlib,
    mirror::push_detects_drift
);
