//! The cluster token's format, shared by the token file the node reads and the token Secret
//! the operator reads: one token per line, the first presented to peers, every line accepted.
//! A second line lets a token be rotated while members restart one at a time.

/// At most this many tokens: a rotation needs two; more is a mistake.
pub const MAX_TOKENS: usize = 4;

/// Why a token list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenListError {
    /// No token at all.
    #[error("holds no token")]
    Empty,
    /// A line that cannot travel in an `Authorization: Bearer` header.
    #[error("line {line} is not a token (visible ASCII without spaces only)")]
    NotAToken {
        /// 1-based line number.
        line: usize,
    },
    /// More lines than a rotation needs.
    #[error("holds {count} tokens; at most {MAX_TOKENS} (the presented one first)")]
    TooMany {
        /// Tokens found.
        count: usize,
    },
}

/// The tokens of `text` in order (the presented one first); blank lines and surrounding
/// whitespace are ignored.
pub fn parse_tokens(text: &str) -> Result<Vec<&str>, TokenListError> {
    let mut tokens = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if !line.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenListError::NotAToken { line: n + 1 });
        }
        tokens.push(line);
    }
    match tokens.len() {
        0 => Err(TokenListError::Empty),
        count if count > MAX_TOKENS => Err(TokenListError::TooMany { count }),
        _ => Ok(tokens),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_read_in_order_without_blank_lines() {
        assert_eq!(parse_tokens("  new \n\nold\n"), Ok(vec!["new", "old"]));
        assert_eq!(parse_tokens("abc"), Ok(vec!["abc"]));
    }

    #[test]
    fn bad_token_lists_are_refused_with_the_reason() {
        assert_eq!(parse_tokens(" \n\n"), Err(TokenListError::Empty));
        assert_eq!(parse_tokens("good\nwith space\n"), Err(TokenListError::NotAToken { line: 2 }));
        assert_eq!(parse_tokens("a\nb\nc\nd\ne"), Err(TokenListError::TooMany { count: 5 }));
        assert_eq!(parse_tokens("tok\u{e9}n"), Err(TokenListError::NotAToken { line: 1 }));
    }
}
