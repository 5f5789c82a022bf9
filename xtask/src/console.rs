//! Driving a guest's serial console: QEMU with piped stdio, a reader thread collecting output, and expect/send steps.

use std::io::{Read, Write as _};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::shell;

/// Fail a wait early when the console has printed nothing for this long: a hung guest, not a slow one.
const SILENCE_LIMIT: Duration = Duration::from_secs(120);

/// How long an exited process's last output may take to reach the reader threads.
const OUTPUT_END_LIMIT: Duration = Duration::from_secs(5);

struct State {
    output: Vec<u8>,
    open_streams: usize,
    last_output: Instant,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A reader thread that panicked cannot leave the byte buffer inconsistent, so keep using it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running QEMU whose console is read and written by the test.
pub struct Console {
    child: Child,
    stdin: Option<ChildStdin>,
    shared: Arc<Shared>,
    /// Output before this offset has been matched already; the next expectation starts here.
    cursor: usize,
}

impl Console {
    pub fn spawn(mut command: Command) -> Result<Console> {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start `{}`", shell::describe(&command)))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                output: Vec::new(),
                open_streams: 2,
                last_output: Instant::now(),
            }),
            changed: Condvar::new(),
        });
        let stdout = child.stdout.take().context("QEMU's stdout was not piped")?;
        let stderr = child.stderr.take().context("QEMU's stderr was not piped")?;
        for stream in [Box::new(stdout) as Box<dyn Read + Send>, Box::new(stderr)] {
            let shared = Arc::clone(&shared);
            thread::spawn(move || collect(stream, &shared));
        }
        let stdin = child.stdin.take();
        Ok(Console {
            child,
            stdin,
            shared,
            cursor: 0,
        })
    }

    /// Waits until `needle` appears after what was matched before, and moves past it.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let needle_bytes = needle.as_bytes();
        let position = self.wait_for(&format!("`{needle}`"), timeout, |output, cursor| {
            output[cursor..]
                .windows(needle_bytes.len())
                .position(|window| window == needle_bytes)
                .map(|offset| cursor + offset + needle_bytes.len())
        })?;
        self.cursor = position;
        Ok(())
    }

    /// Waits for a complete output line (escape sequences and CR removed) that satisfies `accept`,
    /// and moves past it. Returns the line.
    pub fn expect_line(
        &mut self,
        what: &str,
        timeout: Duration,
        accept: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let mut found = String::new();
        let end = self.wait_for(what, timeout, |output, cursor| {
            let mut start = cursor;
            while let Some(offset) = output[start..].iter().position(|&byte| byte == b'\n') {
                let line = clean_line(&output[start..start + offset]);
                if accept(&line) {
                    found = line;
                    return Some(start + offset + 1);
                }
                start += offset + 1;
            }
            None
        })?;
        self.cursor = end;
        Ok(found)
    }

    fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut search: impl FnMut(&[u8], usize) -> Option<usize>,
    ) -> Result<usize> {
        let started = Instant::now();
        let mut state = self.shared.lock();
        loop {
            if let Some(position) = search(&state.output, self.cursor) {
                return Ok(position);
            }
            if state.open_streams == 0 {
                bail!("QEMU closed its output before printing {what}");
            }
            let waited = started.elapsed();
            if waited >= timeout {
                bail!("timed out after {} s waiting for {what}", timeout.as_secs());
            }
            let silent = state.last_output.elapsed();
            if silent >= SILENCE_LIMIT {
                bail!(
                    "the console printed nothing for {} s while waiting for {what}",
                    silent.as_secs()
                );
            }
            let remaining = (timeout - waited)
                .min(SILENCE_LIMIT - silent)
                .min(Duration::from_millis(500));
            state = self
                .shared
                .changed
                .wait_timeout(state, remaining)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }

    /// Types a line into the guest's console.
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .context("the console's input is closed")?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .with_context(|| format!("cannot type `{line}` into the console (QEMU gone?)"))
    }

    /// Types raw bytes (such as a control character) into the console.
    pub fn send_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .context("the console's input is closed")?;
        stdin
            .write_all(bytes)
            .and_then(|()| stdin.flush())
            .context("cannot type into the console (QEMU gone?)")
    }

    /// Waits for QEMU to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().context("cannot poll QEMU")? {
                self.wait_for_output_end(OUTPUT_END_LIMIT);
                return Ok(status);
            }
            if started.elapsed() >= timeout {
                return Err(anyhow!(
                    "QEMU still running {} s after the guest was told to power off",
                    timeout.as_secs()
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the reader threads have taken everything the exited process wrote, so the
    /// transcript holds its last lines. Bounded: a process that handed its pipes on to a child
    /// that still runs would otherwise keep this waiting.
    fn wait_for_output_end(&self, limit: Duration) {
        let started = Instant::now();
        let mut state = self.shared.lock();
        while state.open_streams > 0 {
            let waited = started.elapsed();
            if waited >= limit {
                return;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, limit - waited)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }

    /// Everything the console printed, escape sequences removed.
    pub fn transcript(&self) -> String {
        let state = self.shared.lock();
        state
            .output
            .split(|&byte| byte == b'\n')
            .map(clean_line)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The last `count` lines the console printed.
    pub fn tail(&self, count: usize) -> String {
        let transcript = self.transcript();
        let lines: Vec<&str> = transcript.lines().collect();
        lines[lines.len().saturating_sub(count)..].join("\n")
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn collect(mut stream: Box<dyn Read + Send>, shared: &Shared) {
    let mut buffer = [0u8; 4096];
    loop {
        let count = stream.read(&mut buffer).unwrap_or(0);
        let mut state = shared.lock();
        if count == 0 {
            state.open_streams -= 1;
            shared.changed.notify_all();
            return;
        }
        state.output.extend_from_slice(&buffer[..count]);
        state.last_output = Instant::now();
        shared.changed.notify_all();
    }
}

/// A console line as a person would read it: ANSI escape sequences and carriage returns removed.
pub fn clean_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut clean = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI sequences end with a byte in '@'..='~'; other escapes are two characters long.
                if chars.next_if_eq(&'[').is_some() {
                    for next in chars.by_ref() {
                        if ('@'..='~').contains(&next) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' => {}
            _ => clean.push(c),
        }
    }
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell_console(script: &str) -> Console {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        Console::spawn(command).unwrap()
    }

    #[test]
    fn clean_line_removes_escapes_and_carriage_returns() {
        assert_eq!(
            clean_line(b"\x1b[6nkeel-guest# \x1b[1;32mok\x1b[0m\r"),
            "keel-guest# ok"
        );
        assert_eq!(clean_line(b"a\x1bcb"), "ab");
        assert_eq!(clean_line(b"\x1b["), "");
        assert_eq!(clean_line(b"\xff42"), "\u{fffd}42");
    }

    #[test]
    fn expect_and_send_drive_an_interactive_program() {
        let mut console =
            shell_console("echo ready; read line; echo \"got $line\"; read again; exit 3");
        console.expect("ready", Duration::from_secs(10)).unwrap();
        console.send_line("hello").unwrap();
        let line = console
            .expect_line("the reply", Duration::from_secs(10), |line| {
                line.starts_with("got")
            })
            .unwrap();
        assert_eq!(line, "got hello");
        console.send_line("bye").unwrap();
        let status = console.wait_exit(Duration::from_secs(10)).unwrap();
        assert_eq!(status.code(), Some(3));
        assert!(console.tail(1).contains("got hello"));
    }

    #[test]
    fn matches_are_consumed_in_order() {
        let mut console = shell_console("echo one; echo two; echo one");
        console.expect("one", Duration::from_secs(10)).unwrap();
        console.expect("two", Duration::from_secs(10)).unwrap();
        console.expect("one", Duration::from_secs(10)).unwrap();
        let error = console.expect("one", Duration::from_secs(10)).unwrap_err();
        assert!(error.to_string().contains("closed its output"), "{error}");
    }

    #[test]
    fn waiting_times_out_with_a_message() {
        let mut console = shell_console("echo started; sleep 30");
        let error = console
            .expect("never", Duration::from_millis(300))
            .unwrap_err();
        assert!(error.to_string().contains("timed out"), "{error}");
        let error = console.wait_exit(Duration::from_millis(200)).unwrap_err();
        assert!(error.to_string().contains("still running"), "{error}");
        // Dropping the console kills the program rather than waiting 30 s.
        let started = Instant::now();
        drop(console);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn standard_error_is_collected_too() {
        let mut console = shell_console("echo problem >&2");
        console.expect("problem", Duration::from_secs(10)).unwrap();
    }
}
