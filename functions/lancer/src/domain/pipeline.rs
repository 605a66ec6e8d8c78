//! Pipelines: a named DAG of task specs, and the pure decisions that move one along. The
//! record is the whole truth of a pipeline (each step's status and tasks), so any process
//! can advance it from the store: no scheduler keeps state in memory.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::cache::CacheKey;
use super::error::Invalid;
pub use super::id::PipelineId;
use super::id::TaskId;
use super::path::{LakePath, Name, printable};
use super::task::{Task, TaskError, TaskSpec, TaskStatus};
use super::tenant::{Tenant, TenantName};
use super::validate::{check_idempotency_key, check_spec, resolve_output};

/// The most steps one pipeline may have.
pub const MAX_STEPS: usize = 32;
/// The most bytes of a pipeline's spec: its record must fit a DynamoDB item (400 KB).
pub const MAX_SPEC_BYTES: usize = 128 * 1024;

/// What a client submits: a name and its steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Names the pipeline for people, following the name rule; a schedule's runs share it.
    pub name: String,
    /// At most 32. Each step's `name` is unique in the pipeline.
    pub steps: Vec<StepSpec>,
    /// Whether steps reuse an earlier completed task with the same cache key instead of
    /// running (a step's own `cache` overrides it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache: bool,
    /// A cron expression (five fields, UTC): the pipeline is then a schedule that starts a
    /// run of its steps at each tick, rather than running itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// A key of the tenant's choosing: submitting it again answers the pipeline first
    /// submitted with it. The `Idempotency-Key` header sets it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// A task spec (without an idempotency key: the pipeline's runs make their own) and the
/// steps it waits for. An `input` of `${steps.<name>.output}` reads that step's output
/// and waits for it as well.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "Map<String, Value>")]
pub struct StepSpec {
    /// Steps that must complete before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// Overrides the pipeline's `cache` for this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
    /// The step's task: its `name` names the step, and its `input` may be
    /// `${steps.<name>.output}`.
    #[serde(flatten)]
    pub task: TaskSpec,
}

/// Read by hand: serde's `flatten` would let a misspelt field through, and a task spec
/// refuses unknown fields.
impl TryFrom<Map<String, Value>> for StepSpec {
    type Error = String;

    fn try_from(mut fields: Map<String, Value>) -> Result<Self, String> {
        let after = match fields.remove("after") {
            None => Vec::new(),
            Some(after) => serde_json::from_value(after).map_err(|err| format!("after: {err}"))?,
        };
        let cache = match fields.remove("cache") {
            None => None,
            Some(cache) => serde_json::from_value(cache).map_err(|err| format!("cache: {err}"))?,
        };
        let task = serde_json::from_value(Value::Object(fields)).map_err(|err| err.to_string())?;
        Ok(Self { after, cache, task })
    }
}

/// Where a pipeline stands: a schedule stays `scheduled` until it is stopped; a run is
/// `running` until its steps settle, and a retry makes a failed or cancelled one run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PipelineStatus {
    /// A schedule: it starts runs, each a pipeline of its own.
    Scheduled,
    /// Some step still waits for its upstream, or its task is pending or running.
    Running,
    /// Every step completed, or serves its endpoint.
    Completed,
    /// Nothing is left to run and at least one step failed.
    Failed,
    /// Cancelled by a client, or a schedule the platform stopped; or its steps settled with
    /// one cancelled and none failed.
    Cancelled,
}

impl PipelineStatus {
    /// Running, or a schedule: what reconcile looks after.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Running | Self::Scheduled)
    }

    /// The status as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for PipelineStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step's place in its pipeline: `waiting` for its upstream, its task's status once it
/// has one, `serving` while a service step's endpoint is up, or `skipped` because an
/// upstream step failed or was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    /// Not started yet: it waits for its upstream steps to complete (or begin serving).
    Waiting,
    /// Its task is pending, waiting for a runner.
    Pending,
    /// Its task is running and has reported no endpoint.
    Running,
    /// Its task is running and has reported an endpoint: steps after it may start.
    Serving,
    /// Its task completed, or a cache hit reused an earlier task's output.
    Completed,
    /// Its task failed, or could not be submitted (`error` says why).
    Failed,
    /// Its task was cancelled, or the pipeline was cancelled before the step started.
    Cancelled,
    /// An upstream step failed, was cancelled or was skipped: it cannot start in this run.
    Skipped,
}

impl StepStatus {
    /// Whether the step's task still runs (or may run).
    pub fn is_live(self) -> bool {
        matches!(self, Self::Pending | Self::Running | Self::Serving)
    }

    /// Whether steps after it may start: its output is written, or its service is up.
    fn lets_downstream_start(self) -> bool {
        matches!(self, Self::Completed | Self::Serving)
    }

    /// Whether steps after it can never start in this run.
    fn blocks_downstream(self) -> bool {
        matches!(self, Self::Failed | Self::Cancelled | Self::Skipped)
    }

    fn of_task(task: &Task) -> Self {
        match task.status {
            TaskStatus::Running if task.endpoint.is_some() => Self::Serving,
            TaskStatus::Pending => Self::Pending,
            TaskStatus::Running => Self::Running,
            TaskStatus::Completed => Self::Completed,
            TaskStatus::Failed => Self::Failed,
            TaskStatus::Cancelled => Self::Cancelled,
        }
    }
}

/// One step's state in a pipeline's record: its status, its tasks and what it wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Step {
    /// The step's name, from its task spec's `name`: unique in the pipeline.
    pub name: String,
    /// Where the step stands.
    pub status: StepStatus,
    /// The step's current task; unset while it waits.
    #[schema(value_type = Option<String>)]
    pub task_id: Option<TaskId>,
    /// Every task the step has run, oldest first: a retry adds one.
    #[schema(value_type = Vec<String>)]
    pub tasks: Vec<TaskId>,
    /// How many times a retry reset the step; part of its task's idempotency key.
    pub round: u32,
    /// Why the step failed without a task (its task could not be submitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    /// The version its output became: what a step reading it is pinned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_version: Option<u64>,
    /// Its cache key, when it started or was found in the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<CacheKey>,
    /// The earlier task whose output it reused instead of running (a cache hit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub cached_from: Option<TaskId>,
}

/// A pipeline's record: its spec, each step's state, and for a schedule what it fired.
/// Every write is a compare-and-set on `revision`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Pipeline {
    /// The pipeline's id, a UUIDv7.
    #[schema(value_type = String)]
    pub id: PipelineId,
    /// The tenant it belongs to; its steps' tasks run for that tenant.
    #[schema(value_type = String)]
    pub tenant: TenantName,
    /// That tenant's lake folder, where its steps' inputs and outputs resolve.
    #[schema(value_type = String)]
    pub tenant_root: LakePath,
    /// What the client submitted (for a schedule's run, the schedule's steps).
    pub spec: PipelineSpec,
    /// Where the pipeline stands.
    pub status: PipelineStatus,
    /// In the order of `spec.steps`.
    pub steps: Vec<Step>,
    /// Bumped by every write: the compare-and-set guard of the record.
    pub revision: u64,
    /// For a schedule: the last tick it fired, and its newest runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired: Option<Fired>,
    /// For a run of a schedule: the schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub scheduled_by: Option<PipelineId>,
    /// Why the platform held a schedule's tick back, or stopped the schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// When the record was created: submitted, or fired by its schedule.
    pub created_at: DateTime<Utc>,
    /// When it last advanced, was retried, or had its schedule stopped.
    pub updated_at: DateTime<Utc>,
    /// When it ended: completed, failed or cancelled; cleared by a retry.
    pub finished_at: Option<DateTime<Utc>>,
}

/// What a schedule has fired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Fired {
    /// The newest tick the schedule has dealt with: fired as a run, or held back (`note`
    /// says why).
    pub tick: DateTime<Utc>,
    /// Its newest runs, newest last (at most `KEPT_RUNS`).
    #[schema(value_type = Vec<String>)]
    pub runs: Vec<PipelineId>,
}

/// How many run ids a schedule keeps.
pub const KEPT_RUNS: usize = 20;

/// A schedule's cron expression: five fields (minute to weekday), UTC.
pub fn parse_schedule(expression: &str) -> Result<croner::Cron, Invalid> {
    let refused = || {
        Invalid::rule(format!(
            "schedule '{}' must be a cron expression of five fields (minute hour day month weekday), such as \"0 3 * * *\"",
            printable(expression)
        ))
    };
    if expression.len() > 100 || expression.split_whitespace().count() != 5 {
        return Err(refused());
    }
    expression.parse::<croner::Cron>().map_err(|_| refused())
}

/// Whether a schedule leaves at least `min` between any two of its next 64 runs after
/// `from`: "every minute" is refused where the operator asks for five.
pub fn check_interval(
    schedule: &str,
    from: DateTime<Utc>,
    min: std::time::Duration,
) -> Result<(), Invalid> {
    let cron = parse_schedule(schedule)?;
    let min = chrono::Duration::from_std(min).unwrap_or(chrono::Duration::MAX);
    let mut last = from;
    let mut previous: Option<DateTime<Utc>> = None;
    for _ in 0..64 {
        let Ok(next) = cron.find_next_occurrence(&last, false) else {
            break;
        };
        if previous.is_some_and(|previous| next - previous < min) {
            return Err(Invalid::rule(format!(
                "schedule '{}' runs more often than the {} s this server allows between runs",
                printable(schedule),
                min.num_seconds()
            )));
        }
        previous = Some(next);
        last = next;
    }
    Ok(())
}

/// `${steps.<name>.output}`: the output of step `<name>`.
pub fn input_reference(input: &str) -> Option<&str> {
    input.strip_prefix("${steps.")?.strip_suffix(".output}")
}

/// Checks a pipeline spec as a whole: the name, the number of steps, each step as a task,
/// unique step names, known references and no cycle. Messages name the step.
pub fn check_pipeline(spec: &PipelineSpec) -> Result<(), Invalid> {
    Name::parse("pipeline name", &spec.name)?;
    if let Some(key) = &spec.idempotency_key {
        check_idempotency_key(key)?;
    }
    if let Some(schedule) = &spec.schedule {
        parse_schedule(schedule)?;
    }
    let bytes = serde_json::to_vec(spec).map_or(usize::MAX, |bytes| bytes.len());
    if bytes > MAX_SPEC_BYTES {
        return Err(Invalid::TooLarge(format!(
            "the pipeline is {bytes} bytes; the limit is {MAX_SPEC_BYTES}"
        )));
    }
    if spec.steps.is_empty() || spec.steps.len() > MAX_STEPS {
        return Err(Invalid::rule(format!(
            "a pipeline has 1 to {MAX_STEPS} steps; this one has {}",
            spec.steps.len()
        )));
    }
    let mut names = BTreeSet::new();
    for step in &spec.steps {
        check_step(step)?;
        if !names.insert(step.task.name.as_str()) {
            return Err(Invalid::rule(format!(
                "step '{}': another step has the same name",
                step.task.name
            )));
        }
    }
    for step in &spec.steps {
        if let Some(upstream) = input_reference(&step.task.input) {
            let has_output = spec
                .steps
                .iter()
                .any(|other| other.task.name == upstream && !other.task.output.is_empty());
            if names.contains(upstream) && !has_output {
                return Err(Invalid::rule(format!(
                    "step '{}': its input is the output of step '{upstream}', which has none",
                    step.task.name
                )));
            }
        }
        for upstream in upstream_names(step) {
            if !names.contains(upstream) || upstream == step.task.name {
                return Err(Invalid::rule(format!(
                    "step '{}': '{}' is not another step of this pipeline",
                    step.task.name,
                    printable(upstream)
                )));
            }
        }
    }
    if let Some(step) = step_in_a_cycle(spec) {
        return Err(Invalid::rule(format!(
            "step '{step}': its steps form a cycle, so it could never start"
        )));
    }
    Ok(())
}

fn check_step(step: &StepSpec) -> Result<(), Invalid> {
    let in_step =
        |err: Invalid| Invalid::rule(format!("step '{}': {err}", printable(&step.task.name)));
    if step.task.idempotency_key.is_some() {
        return Err(in_step(Invalid::rule(
            "a step has no idempotency key: the pipeline's key covers it",
        )));
    }
    let mut task = step.task.clone();
    if input_reference(&task.input).is_some() {
        task.input.clear();
    }
    check_spec(&task).map_err(in_step)?;
    if step.after.len() > MAX_STEPS {
        return Err(in_step(Invalid::rule(format!(
            "after names at most {MAX_STEPS} steps"
        ))));
    }
    Ok(())
}

/// The steps a step waits for: its `after`, and the step its input refers to.
fn upstream_names(step: &StepSpec) -> impl Iterator<Item = &str> {
    step.after
        .iter()
        .map(String::as_str)
        .chain(input_reference(&step.task.input))
}

/// A step that can never start because it waits on itself through others, if any
/// (Kahn's algorithm: what is left once every startable step is removed is a cycle).
fn step_in_a_cycle(spec: &PipelineSpec) -> Option<&str> {
    let mut waiting: BTreeMap<&str, BTreeSet<&str>> = spec
        .steps
        .iter()
        .map(|step| (step.task.name.as_str(), upstream_names(step).collect()))
        .collect();
    loop {
        let ready: Vec<&str> = waiting
            .iter()
            .filter(|(_, upstream)| upstream.is_empty())
            .map(|(name, _)| *name)
            .collect();
        if ready.is_empty() {
            return waiting.keys().next().copied();
        }
        for name in ready {
            waiting.remove(name);
            for upstream in waiting.values_mut() {
                upstream.remove(name);
            }
        }
    }
}

impl Pipeline {
    /// A new running pipeline of `tenant`; `spec` passed `check_pipeline`.
    pub fn new(id: PipelineId, tenant: &Tenant, spec: PipelineSpec, now: DateTime<Utc>) -> Self {
        let steps = spec
            .steps
            .iter()
            .map(|step| Step {
                name: step.task.name.clone(),
                status: StepStatus::Waiting,
                task_id: None,
                tasks: Vec::new(),
                round: 0,
                error: None,
                output_version: None,
                cache_key: None,
                cached_from: None,
            })
            .collect();
        let status = match spec.schedule {
            Some(_) => PipelineStatus::Scheduled,
            None => PipelineStatus::Running,
        };
        Self {
            id,
            tenant: tenant.name.clone(),
            tenant_root: tenant.root.clone(),
            spec,
            status,
            steps,
            revision: 0,
            fired: None,
            scheduled_by: None,
            note: None,
            created_at: now,
            updated_at: now,
            finished_at: None,
        }
    }

    /// The tenant the pipeline's tasks run for.
    pub fn tenant(&self) -> Tenant {
        Tenant {
            name: self.tenant.clone(),
            root: self.tenant_root.clone(),
        }
    }

    fn index_of(&self, name: &str) -> usize {
        self.steps
            .iter()
            .position(|step| step.name == name)
            .expect("a checked spec names only its own steps")
    }

    fn upstream(&self, step: usize) -> Vec<usize> {
        upstream_names(&self.spec.steps[step])
            .map(|name| self.index_of(name))
            .collect()
    }

    /// Mirrors the status of a step's task into the step.
    pub fn observe(&mut self, task: &Task) {
        if let Some(step) = self
            .steps
            .iter_mut()
            .find(|step| step.task_id.as_ref() == Some(&task.id))
        {
            step.status = StepStatus::of_task(task);
            step.output_version = task.lineage.output_version;
        }
    }

    /// The waiting steps whose upstream steps all let them start.
    pub fn ready(&self) -> Vec<usize> {
        if self.status != PipelineStatus::Running {
            return Vec::new();
        }
        (0..self.steps.len())
            .filter(|&step| self.steps[step].status == StepStatus::Waiting)
            .filter(|&step| {
                self.upstream(step)
                    .into_iter()
                    .all(|up| self.steps[up].status.lets_downstream_start())
            })
            .collect()
    }

    /// The task spec of a ready step: an input reference becomes the upstream step's
    /// output, and the idempotency key names the pipeline, the step and its round, so two
    /// processes advancing the same pipeline submit one task.
    pub fn task_spec(&self, step: usize) -> TaskSpec {
        let mut spec = self.spec.steps[step].task.clone();
        if let Some(upstream) = input_reference(&spec.input) {
            // The output as the lake path it resolves to (`digits` and `datasets/digits`
            // are both `datasets/digits.lance`), pinned to the version the step wrote.
            let upstream = self.index_of(upstream);
            let output = &self.spec.steps[upstream].task.output;
            let path = resolve_output(output)
                .ok()
                .flatten()
                .map(|path| path.to_string())
                .unwrap_or_default();
            spec.input = match self.steps[upstream].output_version {
                Some(version) => format!("{path}@{version}"),
                None => path,
            };
        }
        let state = &self.steps[step];
        spec.idempotency_key = Some(format!(
            "pipeline/{}/{}/{}",
            self.id, state.name, state.round
        ));
        spec
    }

    /// Records the task a step started.
    pub fn started(&mut self, step: usize, task: &Task) {
        let state = &mut self.steps[step];
        if !state.tasks.contains(&task.id) {
            state.tasks.push(task.id.clone());
        }
        state.task_id = Some(task.id.clone());
        state.status = StepStatus::of_task(task);
        state.cache_key = task.cache_key.clone();
    }

    /// Whether a step may reuse an earlier task's output.
    pub fn caches(&self, step: usize) -> bool {
        self.spec.steps[step].cache.unwrap_or(self.spec.cache)
    }

    /// A step whose key matched `earlier`, a completed task: it completes with that task's
    /// output version, without running.
    pub fn cached(&mut self, step: usize, earlier: &Task, key: CacheKey) {
        let state = &mut self.steps[step];
        state.status = StepStatus::Completed;
        state.output_version = earlier.lineage.output_version;
        state.cache_key = Some(key);
        state.cached_from = Some(earlier.id.clone());
    }

    /// A step whose task could not even be submitted fails with the reason.
    pub fn could_not_start(&mut self, step: usize, error: TaskError) {
        self.steps[step].status = StepStatus::Failed;
        self.steps[step].error = Some(error);
    }

    /// Skips the steps that can no longer start and works out the pipeline's status.
    pub fn settle(&mut self, now: DateTime<Utc>) {
        if self.status != PipelineStatus::Running {
            return;
        }
        // Upstream steps come first in a topological order; repeat until nothing changes.
        loop {
            let blocked: Vec<usize> = (0..self.steps.len())
                .filter(|&step| self.steps[step].status == StepStatus::Waiting)
                .filter(|&step| {
                    self.upstream(step)
                        .into_iter()
                        .any(|up| self.steps[up].status.blocks_downstream())
                })
                .collect();
            if blocked.is_empty() {
                break;
            }
            for step in blocked {
                self.steps[step].status = StepStatus::Skipped;
            }
        }
        let all = |wanted: fn(StepStatus) -> bool| self.steps.iter().all(|s| wanted(s.status));
        let status = if !all(|s| {
            !matches!(
                s,
                StepStatus::Waiting | StepStatus::Pending | StepStatus::Running
            )
        }) {
            PipelineStatus::Running
        } else if all(StepStatus::lets_downstream_start) {
            PipelineStatus::Completed
        } else if self.steps.iter().any(|s| s.status == StepStatus::Failed) {
            PipelineStatus::Failed
        } else {
            PipelineStatus::Cancelled
        };
        if status != PipelineStatus::Running {
            self.finish(status, now);
        }
    }

    fn finish(&mut self, status: PipelineStatus, now: DateTime<Utc>) {
        self.status = status;
        self.finished_at = Some(now);
    }

    /// Whether `cancel` has anything to do: the pipeline runs or is a schedule, or a step's
    /// task still does (a completed pipeline's service).
    pub fn can_cancel(&self) -> bool {
        matches!(
            self.status,
            PipelineStatus::Running | PipelineStatus::Scheduled
        ) || self.steps.iter().any(|s| s.status.is_live())
    }

    /// The tick a schedule should fire now: the newest tick at or before `now` that is
    /// later than the last one it fired (or than its creation). Ticks missed while no
    /// reconciler ran are not made up: only the newest fires.
    pub fn due_tick(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.status != PipelineStatus::Scheduled {
            return None;
        }
        let cron = parse_schedule(self.spec.schedule.as_deref()?).ok()?;
        // Whole seconds: the tick names the run, so every reconciler must compute the same.
        let now = chrono::SubsecRound::trunc_subsecs(now, 0);
        let tick =
            chrono::SubsecRound::trunc_subsecs(cron.find_previous_occurrence(&now, true).ok()?, 0);
        let since = self
            .fired
            .as_ref()
            .map_or(self.created_at, |fired| fired.tick);
        (tick > since).then_some(tick)
    }

    /// The spec of one run of a schedule: its steps, without the schedule or its key.
    pub fn run_spec(&self) -> PipelineSpec {
        PipelineSpec {
            schedule: None,
            idempotency_key: None,
            ..self.spec.clone()
        }
    }

    /// Stops a schedule for good, saying why on its record.
    pub fn stop_schedule(&mut self, now: DateTime<Utc>, why: String) {
        self.status = PipelineStatus::Cancelled;
        self.note = Some(why);
        self.updated_at = now;
        self.finished_at = Some(now);
    }

    /// Records that the schedule let `tick` pass without a run, and why.
    pub fn record_held_back(&mut self, tick: DateTime<Utc>, why: String) {
        let runs = self
            .fired
            .take()
            .map(|fired| fired.runs)
            .unwrap_or_default();
        self.fired = Some(Fired { tick, runs });
        self.note = Some(why);
    }

    /// Records that the schedule fired `tick` as the run `run`.
    pub fn record_fired(&mut self, tick: DateTime<Utc>, run: PipelineId) {
        let mut runs = self
            .fired
            .take()
            .map(|fired| fired.runs)
            .unwrap_or_default();
        if !runs.contains(&run) {
            runs.push(run);
        }
        let excess = runs.len().saturating_sub(KEPT_RUNS);
        runs.drain(..excess);
        self.fired = Some(Fired { tick, runs });
    }

    /// Cancels the pipeline: waiting steps will never start. Returns the tasks to cancel.
    pub fn cancel(&mut self, now: DateTime<Utc>) -> Vec<TaskId> {
        let mut live = Vec::new();
        for step in &mut self.steps {
            match step.status {
                StepStatus::Waiting => step.status = StepStatus::Cancelled,
                status if status.is_live() => live.extend(step.task_id.clone()),
                _ => {}
            }
        }
        self.finish(PipelineStatus::Cancelled, now);
        live
    }

    /// Resumes a failed or cancelled pipeline: the steps that did not complete, and every
    /// step downstream of them, wait again in a new round; completed steps are kept.
    pub fn retry(&mut self) -> Result<(), Invalid> {
        if !matches!(
            self.status,
            PipelineStatus::Failed | PipelineStatus::Cancelled
        ) {
            return Err(Invalid::rule(format!(
                "pipeline {} is {}: only a failed or cancelled pipeline can be retried",
                self.id, self.status
            )));
        }
        let mut again: BTreeSet<usize> = (0..self.steps.len())
            .filter(|&step| !self.steps[step].status.lets_downstream_start())
            .collect();
        loop {
            let downstream: Vec<usize> = (0..self.steps.len())
                .filter(|step| !again.contains(step))
                .filter(|&step| self.upstream(step).iter().any(|up| again.contains(up)))
                .collect();
            if downstream.is_empty() {
                break;
            }
            again.extend(downstream);
        }
        for step in again {
            let state = &mut self.steps[step];
            state.status = StepStatus::Waiting;
            state.task_id = None;
            state.error = None;
            state.output_version = None;
            state.cache_key = None;
            state.cached_from = None;
            state.round += 1;
        }
        self.status = PipelineStatus::Running;
        self.finished_at = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(steps: serde_json::Value) -> PipelineSpec {
        serde_json::from_value(json!({"name": "flow", "steps": steps})).expect("a spec")
    }

    fn refusal(steps: serde_json::Value) -> String {
        check_pipeline(&spec(steps))
            .expect_err("refused")
            .to_string()
    }

    fn flow() -> Pipeline {
        let spec = spec(json!([
            {"name": "clean", "script": "c.py", "output": "digits"},
            {"name": "train", "script": "t.py", "input": "${steps.clean.output}", "output": "models/cnn"},
            {"name": "serve", "script": "s.py", "input": "models/cnn", "after": ["train"]},
        ]));
        check_pipeline(&spec).expect("valid");
        let id = PipelineId::from_uuid(uuid::Uuid::now_v7());
        Pipeline::new(id, &Tenant::single(), spec, Utc::now())
    }

    fn task_in(pipeline: &Pipeline, step: usize, status: TaskStatus) -> Task {
        let id = TaskId::from_uuid(uuid::Uuid::now_v7());
        let mut task = Task::new(
            &id,
            &pipeline.tenant(),
            pipeline.task_spec(step),
            None,
            None,
            Utc::now(),
        );
        task.status = status;
        task
    }

    #[test]
    fn a_step_spec_is_a_task_spec_with_after_and_unknown_fields_are_refused() {
        let step: StepSpec = serde_json::from_value(
            json!({"name": "a", "script": "a.py", "after": ["b"], "params": {"x": 1}}),
        )
        .expect("a step");
        assert_eq!((step.task.name.as_str(), step.after.len()), ("a", 1));
        let unknown = serde_json::from_value::<StepSpec>(
            json!({"name": "a", "script": "a.py", "afterr": ["b"]}),
        );
        assert!(unknown.is_err(), "a misspelt field is refused");
    }

    #[test]
    fn cycles_unknown_references_duplicates_and_too_many_steps_are_refused_by_step() {
        let cycle = refusal(json!([
            {"name": "a", "script": "a.py", "output": "x", "after": ["b"]},
            {"name": "b", "script": "b.py", "input": "${steps.a.output}"},
        ]));
        assert!(
            cycle.contains("step 'a'") && cycle.contains("cycle"),
            "{cycle}"
        );
        let unknown = refusal(json!([{"name": "a", "script": "a.py", "after": ["ghost"]}]));
        assert!(
            unknown.contains("step 'a'") && unknown.contains("ghost"),
            "{unknown}"
        );
        let no_output = refusal(json!([
            {"name": "a", "script": "a.py"},
            {"name": "b", "script": "b.py", "input": "${steps.a.output}"},
        ]));
        assert!(
            no_output.contains("step 'b'") && no_output.contains("has none"),
            "{no_output}"
        );
        let itself = refusal(json!([{"name": "a", "script": "a.py", "after": ["a"]}]));
        assert!(itself.contains("step 'a'"), "{itself}");
        let twice = refusal(json!([
            {"name": "a", "script": "a.py"}, {"name": "a", "script": "b.py"},
        ]));
        assert!(twice.contains("same name"), "{twice}");
        let many: Vec<_> = (0..=MAX_STEPS)
            .map(|i| json!({"name": format!("s{i}"), "script": "a.py"}))
            .collect();
        assert!(refusal(json!(many)).contains("33"));
        assert!(refusal(json!([])).contains("1 to 32"));
        let bad_task = refusal(json!([{"name": "a", "script": "a.py", "max_attempts": 0}]));
        assert!(bad_task.starts_with("step 'a': max_attempts"), "{bad_task}");
        let keyed = refusal(json!([{"name": "a", "script": "a.py", "idempotency_key": "k"}]));
        assert!(keyed.contains("idempotency key"), "{keyed}");
    }

    #[test]
    fn steps_start_in_order_with_the_upstream_output_as_input() {
        let mut pipeline = flow();
        assert_eq!(pipeline.ready(), vec![0]);
        let clean = task_in(&pipeline, 0, TaskStatus::Pending);
        pipeline.started(0, &clean);
        assert_eq!(pipeline.ready(), Vec::<usize>::new());
        let mut done = clean.clone();
        done.status = TaskStatus::Completed;
        pipeline.observe(&done);
        assert_eq!(pipeline.ready(), vec![1]);
        let train = pipeline.task_spec(1);
        assert_eq!(train.input, "datasets/digits.lance");
        let key = train.idempotency_key.expect("a key");
        assert_eq!(key, format!("pipeline/{}/train/0", pipeline.id));
    }

    #[test]
    fn a_pipeline_completes_once_its_service_is_up() {
        let mut pipeline = flow();
        for step in 0..2 {
            let task = task_in(&pipeline, step, TaskStatus::Completed);
            pipeline.started(step, &task);
        }
        let mut serve = task_in(&pipeline, 2, TaskStatus::Running);
        pipeline.started(2, &serve);
        pipeline.settle(Utc::now());
        assert_eq!(pipeline.status, PipelineStatus::Running);
        serve.endpoint = Some("http://127.0.0.1:9000".into());
        pipeline.observe(&serve);
        pipeline.settle(Utc::now());
        assert_eq!(pipeline.status, PipelineStatus::Completed);
        assert_eq!(pipeline.steps[2].status, StepStatus::Serving);
        assert!(pipeline.can_cancel(), "its service can still be stopped");
    }

    #[test]
    fn a_failed_step_skips_everything_downstream_and_a_retry_runs_them_in_a_new_round() {
        let mut pipeline = flow();
        let clean = task_in(&pipeline, 0, TaskStatus::Completed);
        pipeline.started(0, &clean);
        let train = task_in(&pipeline, 1, TaskStatus::Failed);
        pipeline.started(1, &train);
        pipeline.settle(Utc::now());
        assert_eq!(pipeline.status, PipelineStatus::Failed);
        assert_eq!(pipeline.steps[2].status, StepStatus::Skipped);
        pipeline.retry().expect("a failed pipeline can be retried");
        assert_eq!(pipeline.status, PipelineStatus::Running);
        let statuses: Vec<_> = pipeline.steps.iter().map(|s| (s.status, s.round)).collect();
        assert_eq!(
            statuses,
            vec![
                (StepStatus::Completed, 0),
                (StepStatus::Waiting, 1),
                (StepStatus::Waiting, 1)
            ]
        );
        assert_eq!(pipeline.ready(), vec![1]);
        let key = pipeline.task_spec(1).idempotency_key;
        assert!(key.is_some_and(|key| key.ends_with("/train/1")));
        assert!(
            pipeline.retry().is_err(),
            "a running pipeline is not retried"
        );
    }

    #[test]
    fn a_schedule_more_frequent_than_the_minimum_interval_is_refused() {
        let from: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().expect("time");
        let five = std::time::Duration::from_secs(300);
        assert!(check_interval("* * * * *", from, five).is_err());
        assert!(
            check_interval("0,2 * * * *", from, five).is_err(),
            "two minutes apart once an hour"
        );
        assert!(check_interval("*/5 * * * *", from, five).is_ok());
        assert!(check_interval("0 3 * * *", from, five).is_ok());
        let minute = std::time::Duration::from_secs(60);
        assert!(check_interval("* * * * *", from, minute).is_ok());
    }

    #[test]
    fn a_schedule_fires_each_tick_once_and_only_the_newest_missed_one() {
        let mut spec = flow().spec;
        spec.schedule = Some("*/5 * * * *".into());
        check_pipeline(&spec).expect("a valid schedule");
        let created: DateTime<Utc> = "2026-12-01T10:01:00Z".parse().expect("time");
        let id = PipelineId::from_uuid(uuid::Uuid::now_v7());
        let mut schedule = Pipeline::new(id, &Tenant::single(), spec, created);
        assert_eq!(schedule.status, PipelineStatus::Scheduled);
        assert!(
            schedule.ready().is_empty(),
            "a schedule runs no steps itself"
        );
        let at = |time: &str| time.parse::<DateTime<Utc>>().expect("time");
        assert_eq!(schedule.due_tick(at("2026-12-01T10:04:59Z")), None);
        let tick = at("2026-12-01T10:05:00Z");
        assert_eq!(schedule.due_tick(at("2026-12-01T10:05:30Z")), Some(tick));
        assert_eq!(
            schedule.due_tick(at("2026-12-01T10:05:30.123456789Z")),
            Some(tick),
            "the tick has no fraction of a second, whenever it is asked"
        );
        let run = PipelineId::from_uuid(uuid::Uuid::now_v7());
        schedule.record_fired(tick, run.clone());
        assert_eq!(
            schedule.due_tick(at("2026-12-01T10:09:59Z")),
            None,
            "once per tick"
        );
        assert_eq!(
            schedule.due_tick(at("2026-12-01T10:31:00Z")),
            Some(at("2026-12-01T10:30:00Z")),
            "after an outage, the newest tick fires, not every missed one"
        );
        assert_eq!(schedule.run_spec().schedule, None);
        for bad in [
            "* * * *",
            "*/5 * * * * *",
            "61 * * * *",
            "not cron at all x",
        ] {
            let mut spec = flow().spec;
            spec.schedule = Some(bad.into());
            assert!(check_pipeline(&spec).is_err(), "{bad}");
        }
    }

    #[test]
    fn cancelling_stops_waiting_steps_and_names_the_live_tasks() {
        let mut pipeline = flow();
        let clean = task_in(&pipeline, 0, TaskStatus::Running);
        pipeline.started(0, &clean);
        let live = pipeline.cancel(Utc::now());
        assert_eq!(live, vec![clean.id.clone()]);
        assert_eq!(pipeline.status, PipelineStatus::Cancelled);
        assert_eq!(pipeline.steps[1].status, StepStatus::Cancelled);
        assert!(pipeline.ready().is_empty());
    }
}
