//! `scopegate keys report-leak` (tokens a scanner found, one per line, from
//! stdin or a file) and `scopegate secret-patterns` (this deployment's token
//! pattern for gitleaks, TruffleHog and GitHub's custom patterns).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use serde_json::json;

use super::client::{authorized, manage_client, status_text, ClientArgs};
use crate::grpc::pb;
use crate::secret_scanning::token_regex;

#[derive(Args, Debug)]
pub struct ReportLeakArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// File of leaked tokens, one per line (default: stdin). Never pass a
    /// token on the command line: it would show in `ps`.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Where the tokens were seen (a URL), kept on the keys.
    #[arg(long, default_value = "")]
    pub url: String,
    /// What found them (e.g. gitguardian, trufflehog).
    #[arg(long, default_value = "scopegate-cli")]
    pub source: String,
}

pub(super) async fn report_leak(args: ReportLeakArgs) -> Result<ExitCode, String> {
    let mut text = String::new();
    match &args.file {
        Some(path) => {
            text = std::fs::read_to_string(path)
                .map_err(|error| format!("cannot read {}: {error}", path.display()))?
        }
        None => {
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|error| format!("cannot read stdin: {error}"))?;
        }
    }
    let text = zeroize::Zeroizing::new(text);
    let reports: Vec<pb::LeakReport> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|token| pb::LeakReport {
            token: token.to_owned(),
            url: args.url.clone(),
            source: args.source.clone(),
        })
        .collect();
    let count = reports.len();
    let leaked = manage_client(&args.client)
        .await?
        .report_leak(authorized(&args.client, pb::ReportLeakRequest { reports })?)
        .await
        .map_err(status_text)?
        .into_inner()
        .leaked;
    let found = leaked.iter().filter(|leaked| **leaked).count();
    if args.client.json {
        println!(
            "{}",
            json!({"reported": count, "true_positives": found, "leaked": leaked})
        );
    } else {
        println!("{found} of {count} reported tokens are keys of this deployment (acted on); lines: {leaked:?}");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PatternFormat {
    /// A gitleaks rule (TOML).
    Gitleaks,
    /// A TruffleHog custom regex detector (YAML).
    Trufflehog,
    /// GitHub secret scanning's custom pattern (its "secret format" regex).
    Github,
    /// The regular expression alone.
    Regex,
}

#[derive(Args, Debug)]
pub struct SecretPatternsArgs {
    /// The token prefix of the deployment (serve --token-prefix).
    #[arg(long, default_value = crate::token::DEFAULT_PREFIX)]
    pub prefix: String,
    #[arg(long, value_enum, default_value = "gitleaks")]
    pub format: PatternFormat,
}

pub(super) fn secret_patterns(args: &SecretPatternsArgs) -> ExitCode {
    if crate::token::TokenFormat::new(&args.prefix, None).is_err() {
        eprintln!(
            "error: `{}` is not a token prefix ([A-Za-z0-9_]{{1,16}})",
            args.prefix
        );
        return ExitCode::from(2);
    }
    let regex = token_regex(&args.prefix);
    let id = format!("scopegate-{}-api-key", args.prefix.to_lowercase());
    match args.format {
        PatternFormat::Regex => println!("{regex}"),
        PatternFormat::Gitleaks => println!(
            "[[rules]]\nid = \"{id}\"\ndescription = \"scopegate API key ({prefix}.…)\"\nregex = '''{regex}'''\nkeywords = [\"{prefix}.\"]",
            prefix = args.prefix
        ),
        PatternFormat::Trufflehog => println!(
            "detectors:\n  - name: {id}\n    keywords:\n      - \"{prefix}.\"\n    regex:\n      token: '{regex}'",
            prefix = args.prefix
        ),
        PatternFormat::Github => println!(
            "# GitHub: Settings → Code security → Secret scanning → New pattern\n# Secret format:\n{}",
            regex.trim_start_matches(r"\b").trim_end_matches(r"\b")
        ),
    }
    ExitCode::SUCCESS
}
