//! Everything the commands print goes through here. `println!` panics when
//! the reader of stdout has gone (`ftpsync plan | head`); here that ends the
//! printing quietly and the command keeps its exit code.

use std::io::{ErrorKind, Write};

use ftpsync::error::Error;

/// The command's stdout.
#[derive(Debug, Default)]
pub struct Stdout {
    closed: bool,
}

impl Stdout {
    /// Writes `text`. Once the reader has closed the pipe, writes do nothing;
    /// other write errors (a full disk) are errors.
    pub fn print(&mut self, text: &str) -> Result<(), Error> {
        if self.closed {
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            Err(e) => Err(Error::Io(format!("cannot write to stdout: {e}"))),
        }
    }

    /// Whether the reader has gone (nothing more needs computing for it).
    pub fn closed(&self) -> bool {
        self.closed
    }
}

/// A line on stderr; a closed stderr is ignored (there is nobody to tell).
pub fn eprint_line(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}
