//! Flink SQL files split into statements, with the line each starts on, for `sql:` specs.
//!
//! The split respects quoted strings, quoted identifiers and comments, so a `;` inside any of them
//! never ends a statement, and `EXECUTE STATEMENT SET BEGIN … END;` stays one statement. Comments are
//! dropped from the statements handed to the runner; errors name the file and line.

/// One statement of a SQL file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The statement without comments and without its closing `;`.
    pub text: String,
    /// 1-based line of its first character in the file.
    pub line: usize,
    /// 1-based column of its first character on that line.
    pub column: usize,
    /// What it does.
    pub kind: StatementKind,
}

/// How a statement takes part in a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    /// `SET`, `RESET`, DDL, `USE`, `LOAD`/`UNLOAD MODULE`: prepares the session, submits nothing.
    Setup,
    /// `INSERT` or `EXECUTE STATEMENT SET`: the one statement that becomes the Flink job.
    Job,
    /// Anything else (`SELECT`, `SHOW`, `EXPLAIN`, …): refused, it has no sink in a deployed job.
    Other,
}

/// Why a SQL file cannot be a pipeline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    /// A string, quoted identifier or block comment never ends.
    #[error("line {line}: {what} opened here is never closed")]
    Unterminated {
        /// Where it starts.
        line: usize,
        /// `a string`, `a quoted identifier`, `a comment`.
        what: &'static str,
    },
    /// `EXECUTE STATEMENT SET BEGIN` without its `END;`.
    #[error("line {line}: EXECUTE STATEMENT SET BEGIN has no END;")]
    UnclosedStatementSet {
        /// Where the set starts.
        line: usize,
    },
}

/// Splits `text` into statements; a trailing statement without `;` counts too.
pub fn split(text: &str) -> Result<Vec<Statement>, SqlError> {
    let mut raw = Vec::new();
    let mut current = String::new();
    let mut start_line = None;
    let mut line = 1;
    // Byte offset where the current line begins, for the column of a statement's first character.
    let mut line_start = 0;
    let mut chars = text.char_indices().map(|(at, c)| (c, at)).peekable();
    let column_at = |line_start: usize, at: usize| text[line_start..at].chars().count() + 1;
    while let Some((c, at)) = chars.next() {
        match c {
            '\'' | '"' | '`' => {
                let opened = line;
                start_line.get_or_insert((line, column_at(line_start, at)));
                current.push(c);
                loop {
                    let Some((next, next_at)) = chars.next() else {
                        return Err(SqlError::Unterminated {
                            line: opened,
                            what: if c == '\'' {
                                "a string"
                            } else {
                                "a quoted identifier"
                            },
                        });
                    };
                    if next == '\n' {
                        line += 1;
                        line_start = next_at + 1;
                    }
                    current.push(next);
                    if next == c {
                        // A doubled quote is an escaped quote, not the end.
                        if chars.peek().map(|(p, _)| *p) == Some(c) {
                            current.push(c);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                }
            }
            '-' if chars.peek().map(|(p, _)| *p) == Some('-') => {
                for (next, next_at) in chars.by_ref() {
                    if next == '\n' {
                        line += 1;
                        line_start = next_at + 1;
                        current.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek().map(|(p, _)| *p) == Some('*') => {
                let opened = line;
                chars.next();
                // `/*+ … */` is an optimizer hint (STATE_TTL, LOOKUP, …): part of the statement.
                let hint = chars.peek().map(|(p, _)| *p) == Some('+');
                if hint {
                    start_line.get_or_insert((line, column_at(line_start, at)));
                    current.push_str("/*");
                }
                let mut previous = ' ';
                let mut closed = false;
                for (next, next_at) in chars.by_ref() {
                    if next == '\n' {
                        line += 1;
                        line_start = next_at + 1;
                        if !hint {
                            current.push('\n');
                        }
                    }
                    if hint {
                        current.push(next);
                    }
                    if previous == '*' && next == '/' {
                        closed = true;
                        break;
                    }
                    previous = next;
                }
                if !closed {
                    return Err(SqlError::Unterminated {
                        line: opened,
                        what: if hint { "a hint" } else { "a comment" },
                    });
                }
                if !hint {
                    current.push(' ');
                }
            }
            ';' => {
                if let Some(at) = start_line.take() {
                    raw.push((current.trim().to_string(), at));
                }
                current.clear();
            }
            '\n' => {
                line += 1;
                line_start = at + 1;
                current.push('\n');
            }
            c => {
                if !c.is_whitespace() {
                    start_line.get_or_insert((line, column_at(line_start, at)));
                }
                current.push(c);
            }
        }
    }
    if let Some(at) = start_line {
        raw.push((current.trim().to_string(), at));
    }
    join_statement_sets(raw)
}

/// `EXECUTE STATEMENT SET BEGIN INSERT …; INSERT …; END` arrives as several pieces: make it one.
fn join_statement_sets(raw: Vec<(String, (usize, usize))>) -> Result<Vec<Statement>, SqlError> {
    let mut statements = Vec::new();
    let mut open_set: Option<(String, (usize, usize))> = None;
    for (text, (line, column)) in raw {
        match open_set.as_mut() {
            Some((set, _)) => {
                set.push_str(";\n");
                set.push_str(&text);
                if words(&text) == ["END"] {
                    let (text, (line, column)) = open_set.take().unwrap_or_default();
                    statements.push(Statement {
                        text,
                        line,
                        column,
                        kind: StatementKind::Job,
                    });
                }
            }
            None if words(&text).join(" ").starts_with("EXECUTE STATEMENT SET") => {
                open_set = Some((text, (line, column)));
            }
            None => {
                let kind = kind_of(&text);
                statements.push(Statement {
                    text,
                    line,
                    column,
                    kind,
                });
            }
        }
    }
    match open_set {
        Some((_, (line, _))) => Err(SqlError::UnclosedStatementSet { line }),
        None => Ok(statements),
    }
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .take(4)
        .map(|w| w.to_ascii_uppercase())
        .collect()
}

fn kind_of(text: &str) -> StatementKind {
    let words = words(text);
    if creates_table_as_select(text) {
        return StatementKind::Job;
    }
    match words.first().map(String::as_str) {
        Some("INSERT") => StatementKind::Job,
        Some("SET" | "RESET" | "CREATE" | "DROP" | "ALTER" | "USE" | "LOAD" | "UNLOAD") => {
            StatementKind::Setup
        }
        _ => StatementKind::Other,
    }
}

/// `CREATE [OR REPLACE] [TEMPORARY] TABLE … AS SELECT …` and `[CREATE OR] REPLACE TABLE … AS …`:
/// the table is created and filled by a job, like an INSERT.
fn creates_table_as_select(text: &str) -> bool {
    let upper = text.to_ascii_uppercase();
    let tokens: Vec<&str> = upper
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    let head: Vec<&str> = tokens.iter().take(5).copied().collect();
    let is_table = matches!(head.first(), Some(&"CREATE" | &"REPLACE")) && head.contains(&"TABLE");
    is_table
        && tokens
            .windows(2)
            .any(|pair| pair[0] == "AS" && matches!(pair[1], "SELECT" | "WITH" | "VALUES"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(StatementKind, usize)> {
        split(text)
            .unwrap()
            .into_iter()
            .map(|s| (s.kind, s.line))
            .collect()
    }

    #[test]
    fn statements_with_lines_and_kinds() {
        let text = "-- sources\nSET 'pipeline.name' = 'a;b';\n\nCREATE TABLE s (x INT) WITH ('connector' = 'datagen');\n/* the job; */ INSERT INTO t\nSELECT x FROM s";
        assert_eq!(
            kinds(text),
            vec![
                (StatementKind::Setup, 2),
                (StatementKind::Setup, 4),
                (StatementKind::Job, 5)
            ]
        );
        let statements = split(text).unwrap();
        assert_eq!(statements[0].text, "SET 'pipeline.name' = 'a;b'");
        assert_eq!((statements[2].line, statements[2].column), (5, 16));
        assert_eq!(statements[2].text, "INSERT INTO t\nSELECT x FROM s");
    }

    #[test]
    fn quotes_and_comments_hide_semicolons() {
        let text = "INSERT INTO `a;b` SELECT 'it''s; fine', \"c;d\" -- x; y\nFROM s;";
        let statements = split(text).unwrap();
        assert_eq!(statements.len(), 1);
        assert!(statements[0].text.contains("'it''s; fine'"));
        assert!(!statements[0].text.contains("x; y"));
    }

    #[test]
    fn a_statement_set_is_one_job() {
        let text = "CREATE TABLE a (x INT);\nEXECUTE STATEMENT SET\nBEGIN\n  INSERT INTO b SELECT * FROM a;\n  INSERT INTO c SELECT * FROM a;\nEND;\n";
        assert_eq!(
            kinds(text),
            vec![(StatementKind::Setup, 1), (StatementKind::Job, 2)]
        );
        assert_eq!(
            split("EXECUTE STATEMENT SET BEGIN INSERT INTO b SELECT 1;"),
            Err(SqlError::UnclosedStatementSet { line: 1 })
        );
    }

    #[test]
    fn create_table_as_select_is_a_job() {
        assert_eq!(
            kinds(
                "CREATE TABLE t WITH ('connector' = 'blackhole') AS SELECT x FROM s;\nCREATE OR REPLACE TABLE u AS SELECT 1;\nCREATE TABLE v (x INT, y AS x * 2) WITH ('connector' = 'datagen');\nCREATE VIEW w AS SELECT x FROM s;"
            ),
            vec![
                (StatementKind::Job, 1),
                (StatementKind::Job, 2),
                (StatementKind::Setup, 3),
                (StatementKind::Setup, 4)
            ]
        );
    }

    #[test]
    fn hints_stay_in_the_statement() {
        let text = "INSERT INTO t SELECT /*+ STATE_TTL('o' = '1d') */ x /* gone */ FROM o;";
        let statements = split(text).unwrap();
        assert_eq!(
            statements[0].text,
            "INSERT INTO t SELECT /*+ STATE_TTL('o' = '1d') */ x   FROM o"
        );
    }

    #[test]
    fn unterminated_pieces_name_their_line() {
        assert_eq!(
            split("SELECT 1;\nSELECT 'oops;\n"),
            Err(SqlError::Unterminated {
                line: 2,
                what: "a string"
            })
        );
        assert_eq!(
            split("\n\n/* never closed"),
            Err(SqlError::Unterminated {
                line: 3,
                what: "a comment"
            })
        );
    }

    #[test]
    fn empty_and_comment_only_files_have_no_statements() {
        assert_eq!(split("").unwrap(), vec![]);
        assert_eq!(split("-- nothing\n/* here */\n;;\n").unwrap(), vec![]);
        assert_eq!(kinds("SELECT * FROM t;"), vec![(StatementKind::Other, 1)]);
    }
}
