//! Where the parts are put together: a fetcher feeds the upgrade pipeline, the pipeline asks
//! the master to hand over, the master owns processes and sockets, and the control socket and
//! the handle reach both.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use crate::config::{Config, Sanity};
use crate::error::{Error, Result};
use crate::handle::MasterHandle;
use crate::handoff::PipelineCommand;
use crate::master::{self, Event};
use crate::upgrade::{Channels, Pipeline};

/// A master, bound and ready to run, with its upgrade pipeline.
pub struct Master {
    core: master::Master,
    config: Config,
    /// Library mode: the live binary is the master's own executable.
    library: bool,
    version: Option<String>,
    fetcher: Option<Box<dyn handover_fetcher::Fetcher>>,
    commands: (
        mpsc::UnboundedSender<PipelineCommand>,
        mpsc::UnboundedReceiver<PipelineCommand>,
    ),
}

impl Master {
    /// Binds the configured listeners (or adopts systemd's) and prepares to start workers from
    /// `config.binary` (default: this executable) with this process's arguments.
    pub fn new(config: Config) -> Result<Self> {
        let mut master = Self::assemble(master::Master::library(config.clone())?, config);
        master.library = true;
        Ok(master)
    }

    /// A master for any program (`handover run`): workers are `program` with `args`, given
    /// their sockets by systemd's socket-activation protocol.
    pub fn for_program(mut config: Config, program: PathBuf, args: Vec<OsString>) -> Result<Self> {
        config.binary = Some(program);
        if config.upgrade.sanity == Sanity::Handover {
            config.upgrade.sanity = Sanity::ExitZero;
        }
        Ok(Self::assemble(
            master::Master::program(config.clone(), args)?,
            config,
        ))
    }

    fn assemble(core: master::Master, config: Config) -> Self {
        crate::sys::limit_malloc_arenas();
        crate::child_env::pass(&config.pass_env);
        Self {
            core,
            config,
            library: false,
            version: None,
            fetcher: None,
            commands: mpsc::unbounded_channel(),
        }
    }

    /// The version the running program declares (shown in status, the floor for downgrades).
    pub fn set_version(&mut self, version: Option<String>) {
        self.core.set_version(version.clone());
        self.version = version;
    }

    /// Polls `fetcher` for new binaries and installs them through the upgrade pipeline.
    pub fn set_fetcher(&mut self, fetcher: Box<dyn handover_fetcher::Fetcher>) {
        self.fetcher = Some(fetcher);
    }

    /// A handle for restarts, upgrades, stops and status.
    pub fn handle(&self) -> MasterHandle {
        MasterHandle::new(
            self.core.events(),
            self.commands.0.clone(),
            self.core.status(),
        )
    }

    /// The live binary's path.
    pub fn binary(&self) -> &Path {
        self.core.binary()
    }

    /// Runs until a graceful stop completes (returns `Ok`) or a forced stop (returns `Err`).
    /// Must run on a current-thread runtime on the thread that created the master: workers'
    /// parent-death signal is tied to the spawning thread.
    pub async fn run(self) -> Result<()> {
        for warning in self.config.deprecations() {
            tracing::warn!("{warning}");
        }
        let handle = self.handle();
        let Self {
            mut core,
            config,
            library,
            version,
            fetcher,
            commands,
        } = self;
        let carried = core.take_carried();
        let _control_file = match core.control_socket().map(Path::to_path_buf) {
            Some(path) => {
                let (listener, file) = crate::control::bind_or_adopt(&path, carried.control)
                    .map_err(|e| Error::Bind {
                        address: format!("control socket {}", path.display()),
                        source: e,
                    })?;
                tracing::info!(path = %path.display(), "control socket ready");
                core.set_control_socket(std::os::fd::AsRawFd::as_raw_fd(&listener), path);
                tokio::spawn(crate::control::serve(listener, handle));
                Some(file)
            }
            None => {
                crate::control::close_inherited(carried.control);
                None
            }
        };
        let (reports_tx, reports) = mpsc::unbounded_channel();
        core.report_to(reports_tx);
        let (to_master, mut from_pipeline) = mpsc::unbounded_channel();
        let events = core.events();
        tokio::spawn(async move {
            while let Some(message) = from_pipeline.recv().await {
                if events.send(Event::Pipeline(message)).is_err() {
                    break;
                }
            }
        });
        let declared = version
            .as_deref()
            .and_then(|v| semver::Version::parse(v).ok());
        let mut pipeline = Pipeline::new(
            fetcher,
            config.upgrade,
            core.binary().to_path_buf(),
            declared,
            Channels {
                to_master,
                reports,
                commands: commands.1,
            },
        );
        if library {
            pipeline.master_runs_live();
        }
        pipeline.carry_on_from(carried.last_upgrade, carried.fetcher_memory);
        tokio::spawn(pipeline.run());
        core.run().await
    }
}
