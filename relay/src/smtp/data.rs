//! The DATA body decoder: finds the end marker, removes dot-stuffing and enforces the size limit.
//!
//! Pure: bytes in, bytes out, no I/O, so every edge case is a unit test. The end marker is only
//! `CRLF . CRLF` (or `. CRLF` right after the 354 reply). A bare LF or bare CR never ends a line
//! for the end-marker search, so `\n.\n` and `\r.\r` are plain content; the message is then
//! refused as a whole once the real end marker arrives (anti-smuggling, CVE-2023-51766 family).
//! Bytes past the size limit are counted and thrown away, never kept.

/// Where the decoder is within the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (after CRLF, or right after the 354 reply).
    LineStart,
    /// A `.` at line start.
    Dot,
    /// `.` CR at line start: the end marker if LF follows.
    DotCr,
    /// Inside a line.
    Mid,
    /// A CR inside a line (or of an empty line): a line end if LF follows.
    Cr,
}

/// Why a finished message cannot be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataError {
    /// The unstuffed message is longer than the limit.
    TooBig,
    /// A CR not followed by LF, or an LF not preceded by CR.
    BareNewline,
    /// The body was dropped part-way ([`DataDecoder::drop_body`]): no memory to keep it.
    Busy,
}

/// Decodes one DATA section fed in chunks of any size.
#[derive(Debug)]
pub struct DataDecoder {
    state: State,
    limit: usize,
    body: Vec<u8>,
    /// Unstuffed bytes seen, including those thrown away past the limit.
    total: u64,
    bare_newline: bool,
    done: bool,
    /// The body is no longer kept (see [`Self::drop_body`]); the section is still decoded to
    /// its end so that the session stays in step.
    dropping: bool,
}

impl DataDecoder {
    /// A decoder that keeps at most `limit` bytes of message.
    pub fn new(limit: usize) -> DataDecoder {
        DataDecoder {
            state: State::LineStart,
            limit,
            body: Vec::new(),
            total: 0,
            bare_newline: false,
            done: false,
            dropping: false,
        }
    }

    /// Feeds input; returns how many bytes were used. When [`Self::is_done`] is true afterwards,
    /// the end marker was the last byte used and the rest of `input` belongs to the next command.
    pub fn feed(&mut self, input: &[u8]) -> usize {
        for (i, &b) in input.iter().enumerate() {
            if self.done {
                return i;
            }
            self.step(b);
        }
        input.len()
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Bytes of message kept so far.
    pub fn kept(&self) -> usize {
        self.body.len()
    }

    /// Makes the body's buffer hold `bytes` without growing again, so that the memory used is
    /// what the caller accounted for and not a doubling beyond it.
    pub fn make_room(&mut self, bytes: usize) {
        if self.body.capacity() < bytes {
            self.body.reserve_exact(bytes - self.body.len());
        }
    }

    /// The bytes kept since the last call (the caller writes them to disk); the limit still
    /// counts every byte of the message.
    pub fn take_kept(&mut self, buf: Vec<u8>) -> Vec<u8> {
        std::mem::replace(&mut self.body, buf)
    }

    /// Stops keeping the message and frees it; [`Self::finish`] will say [`DataError::Busy`].
    pub fn drop_body(&mut self) {
        self.dropping = true;
        self.body = Vec::new();
    }

    pub fn is_dropping(&self) -> bool {
        self.dropping
    }

    /// Bytes of message seen so far (after unstuffing), kept or not.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The message, or why it cannot be accepted. Call after [`Self::is_done`].
    pub fn finish(self) -> Result<Vec<u8>, DataError> {
        if self.total > self.limit as u64 {
            Err(DataError::TooBig)
        } else if self.dropping {
            Err(DataError::Busy)
        } else if self.bare_newline {
            Err(DataError::BareNewline)
        } else {
            Ok(self.body)
        }
    }

    fn emit(&mut self, b: u8) {
        self.total += 1;
        // `total`, not the buffer's length: the caller may have taken bytes out (spooled).
        if !self.dropping && self.total <= self.limit as u64 {
            self.body.push(b);
        }
    }

    /// A byte inside a line (not a CR), with the bare-LF check.
    fn mid(&mut self, b: u8) {
        if b == b'\n' {
            self.bare_newline = true;
        }
        self.emit(b);
        self.state = State::Mid;
    }

    fn step(&mut self, b: u8) {
        match (self.state, b) {
            (State::LineStart, b'.') => self.state = State::Dot,
            (State::LineStart | State::Mid, b'\r') => self.state = State::Cr,
            (State::LineStart | State::Mid, _) => self.mid(b),
            (State::Dot, b'\r') => self.state = State::DotCr,
            // RFC 5321 §4.5.2: a leading dot on a line that is not the end marker is removed;
            // so `..x` becomes `.x` and `.x` becomes `x`.
            (State::Dot, _) => self.mid(b),
            (State::DotCr, b'\n') => self.done = true,
            (State::DotCr, _) => {
                // `.` CR then something else: the dot is stuffing, the CR is bare.
                self.bare_newline = true;
                self.emit(b'\r');
                self.cr_then(b);
            }
            (State::Cr, b'\n') => {
                self.emit(b'\r');
                self.emit(b'\n');
                self.state = State::LineStart;
            }
            (State::Cr, _) => {
                self.bare_newline = true;
                self.emit(b'\r');
                self.cr_then(b);
            }
        }
    }

    /// The byte after a bare CR: another CR may start a real line end.
    fn cr_then(&mut self, b: u8) {
        if b == b'\r' {
            self.state = State::Cr;
        } else {
            self.mid(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` in one piece; returns the result and the unused rest.
    fn decode(input: &[u8], limit: usize) -> (Result<Vec<u8>, DataError>, Vec<u8>) {
        let mut d = DataDecoder::new(limit);
        let used = d.feed(input);
        assert!(d.is_done(), "no end marker in {input:?}");
        (d.finish(), input[used..].to_vec())
    }

    fn ok(input: &[u8]) -> Vec<u8> {
        let (r, _) = decode(input, 1 << 20);
        r.unwrap()
    }

    #[test]
    fn end_marker_ends_and_the_rest_is_left_for_the_next_command() {
        let (r, rest) = decode(b"Subject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n", 100);
        assert_eq!(r.unwrap(), b"Subject: x\r\n\r\nhi\r\n");
        assert_eq!(rest, b"QUIT\r\n");
    }

    #[test]
    fn empty_message() {
        assert_eq!(ok(b".\r\n"), b"");
    }

    #[test]
    fn a_body_of_a_single_dot_arrives_as_a_dot() {
        assert_eq!(ok(b"..\r\n.\r\n"), b".\r\n");
        assert_eq!(ok(b"a\r\n..\r\n.\r\n"), b"a\r\n.\r\n");
    }

    #[test]
    fn leading_double_dot_becomes_one_dot() {
        assert_eq!(ok(b"..x\r\n...\r\n.\r\n"), b".x\r\n..\r\n");
        // A single leading dot before other text is stuffing too (RFC 5321 §4.5.2).
        assert_eq!(ok(b".x\r\n.\r\n"), b"x\r\n");
        // Dots inside a line are content.
        assert_eq!(ok(b"a.b\r\na..\r\n.\r\n"), b"a.b\r\na..\r\n");
    }

    #[test]
    fn byte_by_byte_feeding_gives_the_same_result() {
        let input = b"..a\r\n\r\n.b\r\nc.\r\n.\r\nNOOP\r\n";
        let mut d = DataDecoder::new(100);
        let mut used = 0;
        for b in input.iter() {
            used += d.feed(std::slice::from_ref(b));
            if d.is_done() {
                break;
            }
        }
        assert_eq!(&input[used..], b"NOOP\r\n");
        assert_eq!(d.finish().unwrap(), b".a\r\n\r\nb\r\nc.\r\n");
    }

    #[test]
    fn bare_lf_dot_lf_is_not_an_end_marker_and_the_message_is_refused() {
        let input = b"hi\n.\nMAIL FROM:<evil@x>\r\n.\r\n";
        let (r, rest) = decode(input, 1000);
        assert_eq!(r, Err(DataError::BareNewline));
        assert!(rest.is_empty());
        // `\r\n.\n` and `\n.\r\n` are not end markers either.
        let (r, rest) = decode(b"a\r\n.\nb\n.\r\nc\r\n.\r\nX", 1000);
        assert_eq!(r, Err(DataError::BareNewline));
        assert_eq!(rest, b"X");
    }

    #[test]
    fn bare_cr_is_refused() {
        let (r, _) = decode(b"a\rb\r\n.\r\n", 1000);
        assert_eq!(r, Err(DataError::BareNewline));
        let (r, _) = decode(b"a\r\n.\r.\r\n.\r\n", 1000);
        assert_eq!(r, Err(DataError::BareNewline));
        // CR CR LF: the first CR is bare, the second ends the line.
        let (r, rest) = decode(b"a\r\r\n.\r\nZ", 1000);
        assert_eq!(r, Err(DataError::BareNewline));
        assert_eq!(rest, b"Z");
    }

    #[test]
    fn oversize_is_counted_but_not_kept() {
        let mut input = vec![b'x'; 5000];
        input.extend_from_slice(b"\r\n.\r\n");
        let mut d = DataDecoder::new(1000);
        d.feed(&input);
        assert!(d.is_done());
        assert_eq!(d.total(), 5002);
        assert!(d.body.len() <= 1000);
        assert_eq!(d.finish(), Err(DataError::TooBig));
    }

    #[test]
    fn exactly_the_limit_is_accepted() {
        let mut input = vec![b'x'; 8];
        input.extend_from_slice(b"\r\n.\r\n");
        let (r, _) = decode(&input, 10);
        assert_eq!(r.unwrap().len(), 10);
        let (r, _) = decode(&input, 9);
        assert_eq!(r, Err(DataError::TooBig));
    }
}
