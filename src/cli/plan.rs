//! `ftpsync plan` over one or more jobs: the plan of each, in order, and an
//! exit code that can say whether there is anything to do.

use ftpsync::engine;
use ftpsync::error::{Error, exit};
use ftpsync::job::Job;
use ftpsync::report;

use super::Ui;
use super::out::{Stdout, eprint_line};

/// The options of one `ftpsync plan`.
pub struct PlanArgs {
    pub json: bool,
    pub force_delete: bool,
    /// `--detailed-exitcode`: 0 nothing to do, 2 changes, 1 any error.
    pub detailed: bool,
}

/// Plans each job in order. Errors are printed as they happen and the
/// others still planned; the exit code is the worst (see [`exit::worst`]).
pub async fn plan(
    jobs: Vec<Result<Job, Error>>,
    args: &PlanArgs,
    ui: &Ui,
    out: &mut Stdout,
) -> Result<i32, Error> {
    let several = jobs.len() > 1;
    let mut code = exit::OK;
    let mut first = true;
    for job in jobs {
        let c = match job {
            Ok(j) => match plan_one(&j, args, ui, out, first).await {
                Ok(c) => {
                    first = false;
                    c
                }
                Err(e) => {
                    // With several jobs, say whose error it is.
                    let whose = if several {
                        format!("{}: ", j.file.display())
                    } else {
                        String::new()
                    };
                    failed(&format!("{whose}{e}"), e.exit_code(), args)
                }
            },
            // Job file errors name the file already.
            Err(e) => failed(&e.to_string(), e.exit_code(), args),
        };
        code = if args.detailed {
            exit::worst_detailed(code, c)
        } else {
            exit::worst(code, c)
        };
        if out.closed() {
            break;
        }
    }
    Ok(code)
}

fn failed(message: &str, code: i32, args: &PlanArgs) -> i32 {
    eprint_line(&format!("ftpsync: error: {message}"));
    if args.detailed {
        exit::PLAN_ERROR
    } else {
        code
    }
}

/// One job's plan, printed; its exit code under `--detailed-exitcode`
/// (0 otherwise).
async fn plan_one(
    j: &Job,
    args: &PlanArgs,
    ui: &Ui,
    out: &mut Stdout,
    first: bool,
) -> Result<i32, Error> {
    let prepared = engine::prepare(j, false, args.force_delete).await?;
    let plan = &prepared.plan;
    let code = if !args.detailed {
        exit::OK
    } else if !plan.skipped_untrusted.is_empty()
        || plan.items.iter().any(|i| i.reason.withholds_delete())
    {
        // Part of the tree could not be listed, or not well enough to
        // delete in it: "nothing to do" is not known.
        exit::PLAN_ERROR
    } else if plan.create_target_root || plan.changes().next().is_some() {
        exit::PLAN_CHANGES
    } else {
        exit::OK
    };
    // -q leaves out the human plan; JSON is data that was asked for.
    let printed = if args.json {
        let sep = if first { "" } else { "\n" };
        out.print(&format!("{sep}{}\n", report::plan_json(&prepared)))
    } else if !ui.quiet {
        let sep = if first { "" } else { "\n" };
        out.print(&format!("{sep}{}", report::plan_text(&prepared)))
    } else {
        Ok(())
    };
    prepared.pool.close().await;
    printed?;
    Ok(code)
}
