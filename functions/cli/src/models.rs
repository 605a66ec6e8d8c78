//! `lancer models`: the models in the lake, their aliases (set, canary, rollback,
//! history), and how their aliased versions are served.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client::Client;
use crate::{ArtifactCommand, artifacts, print_json};

#[derive(Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    command: ModelCommand,
}

#[derive(Subcommand)]
enum ModelCommand {
    #[command(flatten)]
    Artifact(ArtifactCommand),
    /// A model's aliases: names that point at its versions.
    #[command(subcommand)]
    Alias(AliasCommand),
    /// How a model's aliased versions are served: each alias is then an endpoint,
    /// /api/v1/models/<model>@<alias>/endpoint/.
    #[command(subcommand)]
    Serving(ServingCommand),
}

#[derive(Subcommand)]
enum ServingCommand {
    /// Declare the script that serves each aliased version, and its replicas.
    Declare {
        model: String,
        /// The registered serving script.
        #[arg(long)]
        script: String,
        /// The script's params, as JSON.
        #[arg(long, default_value = "{}")]
        params: String,
        /// Fewest replicas per version (0: none while idle).
        #[arg(long, default_value_t = 1)]
        min: u32,
        /// Most replicas per version.
        #[arg(long, default_value_t = 1)]
        max: u32,
        /// Idle seconds before a replica stops.
        #[arg(long)]
        scale_down_after_s: Option<u32>,
    },
    /// The declaration and each replica (version, task, state) as JSON.
    Get { model: String },
    /// Stop serving the model (its aliases stay).
    Stop { model: String },
}

#[derive(Subcommand)]
enum AliasCommand {
    /// List a model's aliases.
    List { model: String },
    /// Show one alias as JSON.
    Get { model: String, alias: String },
    /// Point an alias at one version (all of its traffic); creates the alias if needed.
    Set {
        model: String,
        alias: String,
        version: u64,
    },
    /// Send a share of the alias's traffic to `version` as a canary; the version it names
    /// now keeps the rest.
    Canary {
        model: String,
        alias: String,
        version: u64,
        /// The canary's share, 1 to 99.
        #[arg(long, default_value_t = 10)]
        percent: u32,
    },
    /// Undo the alias's last change (a canary, a move, a delete).
    Rollback { model: String, alias: String },
    /// The alias's changes, newest first.
    History { model: String, alias: String },
    /// Remove an alias (its history stays).
    Delete { model: String, alias: String },
}

pub async fn run(client: &Client, args: ModelArgs) -> Result<()> {
    match args.command {
        ModelCommand::Artifact(command) => artifacts(client, "models", command).await,
        ModelCommand::Alias(command) => alias(client, command).await,
        ModelCommand::Serving(command) => serving(client, command).await,
    }
}

async fn serving(client: &Client, command: ServingCommand) -> Result<()> {
    match command {
        ServingCommand::Declare {
            model,
            script,
            params,
            min,
            max,
            scale_down_after_s,
        } => {
            let params: Value = serde_json::from_str(&params).context("--params is not JSON")?;
            let mut body =
                json!({"script": script, "params": params, "replicas": {"min": min, "max": max}});
            if let Some(seconds) = scale_down_after_s {
                body["scale_down_after_s"] = json!(seconds);
            }
            print_json(
                &client
                    .put_value(&format!("/models/{model}/serving"), &body)
                    .await?,
            )
        }
        ServingCommand::Get { model } => print_json(
            &client
                .get_value(&format!("/models/{model}/serving"))
                .await?,
        ),
        ServingCommand::Stop { model } => {
            client.delete(&format!("/models/{model}/serving")).await?;
            println!("stopped serving model {model}");
            Ok(())
        }
    }
}

fn path(model: &str, alias: &str) -> String {
    format!("/models/{model}/aliases/{alias}")
}

async fn alias(client: &Client, command: AliasCommand) -> Result<()> {
    match command {
        AliasCommand::List { model } => {
            let list = client
                .get_value(&format!("/models/{model}/aliases"))
                .await?;
            println!("{:<24} {:<24} UPDATED", "ALIAS", "VERSIONS");
            for alias in list["aliases"].as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:<24} {}",
                    alias["alias"].as_str().unwrap_or_default(),
                    weights(&alias["versions"]),
                    alias["updated_at"].as_str().unwrap_or_default()
                );
            }
            Ok(())
        }
        AliasCommand::Get { model, alias } => {
            print_json(&client.get_value(&path(&model, &alias)).await?)
        }
        AliasCommand::Set {
            model,
            alias,
            version,
        } => {
            let body = json!({ "version": version });
            print_json(&client.put_value(&path(&model, &alias), &body).await?)
        }
        AliasCommand::Canary {
            model,
            alias,
            version,
            percent,
        } => canary(client, &path(&model, &alias), version, percent).await,
        AliasCommand::Rollback { model, alias } => {
            let rollback = format!("{}/rollback", path(&model, &alias));
            print_json(&client.post_value(&rollback).await?)
        }
        AliasCommand::History { model, alias } => history(client, &path(&model, &alias)).await,
        AliasCommand::Delete { model, alias } => {
            client.delete(&path(&model, &alias)).await?;
            println!("deleted alias {alias} of model {model}");
            Ok(())
        }
    }
}

/// Splits the alias between the one version it names now and `version`.
async fn canary(client: &Client, path: &str, version: u64, percent: u32) -> Result<()> {
    if !(1..=99).contains(&percent) {
        bail!("--percent is 1 to 99");
    }
    let current = client.get_value(path).await?;
    let stable = current["version"]
        .as_u64()
        .context("a canary starts from an alias that names one version; set it first")?;
    if stable == version {
        bail!("the alias already names version {version}");
    }
    let versions = json!({ stable.to_string(): 100 - percent, version.to_string(): percent });
    print_json(
        &client
            .put_value(path, &json!({ "versions": versions }))
            .await?,
    )
}

async fn history(client: &Client, path: &str) -> Result<()> {
    let history = client.get_value(&format!("{path}/history")).await?;
    println!(
        "{:<32} {:<10} {:<16} {:<24} VALUE",
        "AT", "ACTION", "TENANT", "PREVIOUS"
    );
    for change in history["changes"].as_array().into_iter().flatten() {
        println!(
            "{:<32} {:<10} {:<16} {:<24} {}",
            change["at"].as_str().unwrap_or_default(),
            change["action"].as_str().unwrap_or_default(),
            change["tenant"].as_str().unwrap_or_default(),
            weights(&change["previous"]),
            weights(&change["value"])
        );
    }
    Ok(())
}

/// `{"7": 90, "8": 10}` as `7:90 8:10`; `-` for none.
fn weights(versions: &Value) -> String {
    match versions.as_object() {
        Some(map) if !map.is_empty() => map
            .iter()
            .map(|(version, weight)| format!("{version}:{weight}"))
            .collect::<Vec<_>>()
            .join(" "),
        _ => "-".into(),
    }
}
