//! `berth taskdef register|ls|describe`.

use std::path::{Path, PathBuf};

use berth_client::ClientError;
use serde_json::{Value, json};

use super::output::{Table, emit};
use super::{Common, read_file, s, taskdef_short};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  berth taskdef register web.json\n  berth taskdef register web.yaml -o json\n  berth taskdef ls\n  berth taskdef describe web:3"
)]
pub struct TaskdefArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: TaskdefCmd,
}

#[derive(Debug, clap::Subcommand)]
enum TaskdefCmd {
    /// Register a task definition from a JSON or YAML file (RegisterTaskDefinition input,
    /// or DescribeTaskDefinition output).
    #[command(after_help = "Example:\n  berth taskdef register web.json")]
    Register { file: PathBuf },
    /// List active task definitions.
    #[command(after_help = "Example:\n  berth taskdef ls --family web")]
    Ls {
        #[arg(long)]
        family: Option<String>,
    },
    /// Show one task definition.
    #[command(after_help = "Example:\n  berth taskdef describe web:3 -o yaml")]
    Describe { taskdef: String },
}

/// Members DescribeTaskDefinition returns that RegisterTaskDefinition refuses.
const READ_ONLY: &[&str] = &[
    "taskDefinitionArn",
    "revision",
    "status",
    "registeredAt",
    "registeredBy",
    "deregisteredAt",
    "requiresAttributes",
    "compatibilities",
];

/// The RegisterTaskDefinition body in a JSON/YAML file; errors name the line.
pub fn load(path: &Path, text: &str) -> Result<Value, ClientError> {
    let file = path.display().to_string();
    let yaml = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml") | Some("yml"));
    let mut v: Value = if yaml {
        serde_yaml::from_str(text).map_err(|e| ClientError::Input {
            location: e.location().map_or(file.clone(), |l| {
                format!("{file}: line {}, column {}", l.line(), l.column())
            }),
            message: e.to_string().split(" at line ").next().unwrap_or_default().to_string(),
        })?
    } else {
        serde_json::from_str(text).map_err(|e| ClientError::Input {
            location: format!("{file}: line {}, column {}", e.line(), e.column()),
            message: e.to_string().split(" at line ").next().unwrap_or_default().to_string(),
        })?
    };
    if let Some(inner) = v.get("taskDefinition").filter(|x| x.is_object()) {
        v = inner.clone();
    }
    let Value::Object(m) = &mut v else {
        return Err(ClientError::Input {
            location: file,
            message: "a task definition must be an object with family and containerDefinitions".into(),
        });
    };
    for k in READ_ONLY {
        m.remove(*k);
    }
    Ok(v)
}

fn td_table(tds: &[Value]) -> Table {
    let mut t = Table::new(&["TASKDEF", "STATUS", "CONTAINERS", "CPU", "MEMORY"]);
    for td in tds {
        let names: Vec<String> = td["containerDefinitions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| format!("{} ({})", s(c, "name"), s(c, "image")))
            .collect();
        t.row(vec![
            taskdef_short(s(td, "taskDefinitionArn")).into(),
            s(td, "status").into(),
            names.join(", "),
            td.get("cpu").and_then(Value::as_str).unwrap_or("-").into(),
            td.get("memory").and_then(Value::as_str).unwrap_or("-").into(),
        ]);
    }
    t
}

pub async fn taskdef(a: TaskdefArgs) -> anyhow::Result<()> {
    let fmt = a.common.output;
    match a.cmd {
        TaskdefCmd::Register { file } => {
            let text = read_file(&file)?;
            let body = load(&file, &text)?;
            let client = a.common.client()?;
            let r = client.call("RegisterTaskDefinition", &body).await?;
            let td = &r["taskDefinition"];
            emit(fmt, td, &td_table(std::slice::from_ref(td)));
        }
        TaskdefCmd::Ls { family } => {
            let client = a.common.client()?;
            let mut body = json!({});
            if let Some(f) = family {
                body["familyPrefix"] = json!(f);
            }
            let arns = client
                .call_all("ListTaskDefinitions", &body, "taskDefinitionArns")
                .await?;
            if fmt == super::Format::Table {
                let mut t = Table::new(&["TASKDEF", "ARN"]);
                for a in arns.iter().filter_map(Value::as_str) {
                    t.row(vec![taskdef_short(a).into(), a.into()]);
                }
                print!("{}", t.render());
            } else {
                super::output::emit_value(fmt, &Value::Array(arns));
            }
        }
        TaskdefCmd::Describe { taskdef } => {
            let client = a.common.client()?;
            let r = client
                .call("DescribeTaskDefinition", &json!({"taskDefinition": taskdef}))
                .await?;
            let td = &r["taskDefinition"];
            emit(fmt, td, &td_table(std::slice::from_ref(td)));
        }
    }
    Ok(())
}
