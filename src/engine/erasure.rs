//! A patient's erasure (crypto-shredding) and the legal holds that prevent it:
//! `Patient/{id}/$erase`, `$erase-cancel` and `$legal-hold`, and the execution of erasures
//! once due.
//!
//! An erasure destroys the patient's compartment key: every version of every record of the
//! patient, in every storage location, stays where it is but never opens again. Copies of the
//! index taken before hold the key wrapped under a KEK version, which the next rotation
//! destroys (`KeyService::rotate`): from then on those copies cannot open it either.

use std::time::Duration;

use crate::audit::{Agent, AuditAction, AuditRecord, RequestMeta, Target};
use crate::auth::Principal;
use crate::config::RetentionRule;
use crate::fhir::Compartment;
use crate::ids::{ResourceId, ResourceType, TenantId};
use crate::policy::{Action, Permit};
use crate::storage::{ErasureState, LegalHold};
use crate::time::Timestamp;

use super::{Engine, EngineError, RequestContext};

const DAY_MS: i64 = 24 * 3600 * 1000;
/// Retention years are counted in days of 365.25.
const YEAR_MS: i64 = 31_557_600_000;
/// Due erasures executed per index round trip.
const DUE_PAGE: u32 = 100;

/// How erasures are timed and what prevents them (from `erasure.*`).
#[derive(Debug, Clone, Default)]
pub struct ErasurePolicy {
    pub delay: Duration,
    pub retention: Vec<RetentionRule>,
}

/// What an erasure operation did, for the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasureAnswer {
    /// 200 (done now, or cancelled, or a hold set or cleared) or 202 (scheduled).
    pub status: u16,
    pub message: String,
}

impl Engine {
    /// `POST Patient/{id}/$erase`: schedule the erasure of the patient's data after the
    /// configured delay (executed at once when the delay is 0).
    pub async fn erase(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        id: &ResourceId,
    ) -> Result<ErasureAnswer, EngineError> {
        let result = self.schedule(ctx, principal, id).await;
        self.audited(ctx, principal, AuditAction::Erase, patient_target(id), result).await
    }

    async fn schedule(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        id: &ResourceId,
    ) -> Result<ErasureAnswer, EngineError> {
        let permit = self.authorize_patient(ctx, principal, Action::Erase, id).await?;
        let status = self.index.patient_status(&ctx.tenant, id.as_str()).await?;
        if let Some(erasure) = &status.erasure {
            match erasure.state {
                ErasureState::Done => return Err(erased(id, erasure.done_at)),
                ErasureState::Scheduled => {
                    return Err(EngineError::Retained(format!(
                        "the erasure of Patient/{id} is already scheduled, due {}",
                        erasure.due_at.to_fhir()
                    )));
                }
                ErasureState::Cancelled => {}
            }
        }
        if let Some(hold) = &status.hold {
            return Err(held(id, hold));
        }
        self.check_retention(&ctx.tenant, id).await?;

        let now = Timestamp::now();
        let delay_ms = i64::try_from(self.erasure.delay.as_millis()).unwrap_or(i64::MAX);
        let due = Timestamp::from_millis(now.millis().saturating_add(delay_ms));
        let immediate = delay_ms == 0;
        let message = if immediate {
            format!("the data of Patient/{id} was erased: it can no longer be read")
        } else {
            format!(
                "the erasure of Patient/{id} is scheduled for {}; `$erase-cancel` cancels it until then",
                due.to_fhir()
            )
        };
        let status_code = if immediate { 200 } else { 202 };
        let record = record(ctx, principal, AuditAction::Erase, id, (status_code, "erasure scheduled"), &permit);
        if !self.index.schedule_erasure(&ctx.tenant, id.as_str(), principal.subject(), due, &record).await? {
            // A legal hold or another request came first.
            let now_status = self.index.patient_status(&ctx.tenant, id.as_str()).await?;
            return Err(match (now_status.hold, now_status.erasure) {
                (Some(hold), _) => held(id, &hold),
                (None, Some(e)) if e.state == ErasureState::Done => erased(id, e.done_at),
                _ => EngineError::Conflict,
            });
        }
        if immediate {
            let agent = Agent::of(principal);
            if !self.execute_erasure(&ctx.meta, &ctx.tenant, id, agent).await? {
                return Err(EngineError::Conflict);
            }
        }
        Ok(ErasureAnswer { status: status_code, message })
    }

    /// `POST Patient/{id}/$erase-cancel`: cancel a scheduled erasure that is not due yet.
    pub async fn cancel_erasure(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        id: &ResourceId,
    ) -> Result<ErasureAnswer, EngineError> {
        let result = async {
            let permit = self.authorize_patient(ctx, principal, Action::Erase, id).await?;
            let record = record(ctx, principal, AuditAction::EraseCancel, id, (200, "erasure cancelled"), &permit);
            if self.index.cancel_erasure(&ctx.tenant, id.as_str(), &record).await? {
                return Ok(ErasureAnswer { status: 200, message: format!("the erasure of Patient/{id} is cancelled") });
            }
            let status = self.index.patient_status(&ctx.tenant, id.as_str()).await?;
            Err(match status.erasure {
                Some(e) if e.state == ErasureState::Done => erased(id, e.done_at),
                Some(e) if e.state == ErasureState::Scheduled => EngineError::Retained(format!(
                    "the erasure of Patient/{id} fell due at {} and can no longer be cancelled",
                    e.due_at.to_fhir()
                )),
                _ => EngineError::Retained(format!("no erasure of Patient/{id} is scheduled")),
            })
        }
        .await;
        self.audited(ctx, principal, AuditAction::EraseCancel, patient_target(id), result).await
    }

    /// `POST Patient/{id}/$legal-hold`: set (`Some(reason)`) or clear a legal hold. Setting
    /// one cancels a scheduled erasure.
    pub async fn legal_hold(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        id: &ResourceId,
        reason: Option<String>,
    ) -> Result<ErasureAnswer, EngineError> {
        let result = async {
            let permit = self.authorize_patient(ctx, principal, Action::LegalHold, id).await?;
            let status = self.index.patient_status(&ctx.tenant, id.as_str()).await?;
            if let Some(e) = status.erasure.filter(|e| e.state == ErasureState::Done) {
                return Err(erased(id, e.done_at));
            }
            let detail = if reason.is_some() { "legal hold set" } else { "legal hold cleared" };
            let record = record(ctx, principal, AuditAction::LegalHold, id, (200, detail), &permit);
            let hold = reason.map(|reason| LegalHold {
                reason,
                set_by: principal.subject().to_owned(),
                set_at: record.recorded,
            });
            let cancelled = self.index.set_legal_hold(&ctx.tenant, id.as_str(), hold.as_ref(), &record).await?;
            let message = match (&hold, cancelled) {
                (Some(_), true) => format!("legal hold set on Patient/{id}; its scheduled erasure is cancelled"),
                (Some(_), false) => format!("legal hold set on Patient/{id}: its data cannot be erased"),
                (None, _) => format!("legal hold on Patient/{id} cleared"),
            };
            Ok(ErasureAnswer { status: 200, message })
        }
        .await;
        self.audited(ctx, principal, AuditAction::LegalHold, patient_target(id), result).await
    }

    /// Execute every erasure that has fallen due (the server's background task). Returns how
    /// many were executed.
    pub async fn run_due_erasures(&self) -> Result<usize, EngineError> {
        let meta =
            RequestMeta { request_id: format!("erasure-{}", Timestamp::now().millis()), ..RequestMeta::default() };
        let mut done = 0;
        loop {
            let due = self.index.due_erasures(Timestamp::now(), DUE_PAGE).await?;
            let mut progressed = false;
            for (tenant, patient) in &due {
                let (Ok(tenant), Ok(id)) = (TenantId::parse(tenant), ResourceId::parse(patient)) else {
                    tracing::error!("a scheduled erasure names an invalid tenant or patient id; skipped");
                    continue;
                };
                if self.execute_erasure(&meta, &tenant, &id, server_agent()).await? {
                    done += 1;
                    progressed = true;
                }
            }
            if due.len() < DUE_PAGE as usize || !progressed {
                return Ok(done);
            }
        }
    }

    /// Destroy the compartment key of a due erasure, remove the compartment's search rows,
    /// and record it; `false` when it was not due any more (cancelled, held, done elsewhere).
    async fn execute_erasure(
        &self,
        meta: &RequestMeta,
        tenant: &TenantId,
        id: &ResourceId,
        agent: Agent,
    ) -> Result<bool, EngineError> {
        let key_ref = Compartment::Patient(id.clone()).key_ref();
        let record = AuditRecord::new(meta, Some(tenant), agent, AuditAction::Erase)
            .target(&patient_target(id))
            .outcome(200, Some("compartment key destroyed (crypto-shredding)".into()));
        let erased = self.index.erase(tenant, id.as_str(), &record).await?;
        if erased {
            self.keys.forget_compartment_key(tenant, &key_ref).await;
            tracing::info!(tenant = %tenant, "a patient's data was erased");
        }
        Ok(erased)
    }

    /// Decide `action` on the patient's compartment; the patient must exist (or have existed).
    async fn authorize_patient(
        &self,
        ctx: &RequestContext,
        principal: &Principal,
        action: Action,
        id: &ResourceId,
    ) -> Result<Permit, EngineError> {
        let compartment = Compartment::Patient(id.clone());
        let permit = self.policies.authorize(
            principal,
            action,
            &self.policy_target(ctx, ResourceType::PATIENT, Some(&compartment)),
        )?;
        if self.index.current(&ctx.tenant, ResourceType::PATIENT, id).await?.is_none() {
            return Err(EngineError::NotFound { rt: ResourceType::PATIENT, id: id.clone() });
        }
        Ok(permit)
    }

    /// Refuse while a retention rule keeps some of the patient's records.
    async fn check_retention(&self, tenant: &TenantId, id: &ResourceId) -> Result<(), EngineError> {
        if self.erasure.retention.is_empty() {
            return Ok(());
        }
        let activity = self.index.compartment_activity(tenant, &Compartment::Patient(id.clone()).key_ref()).await?;
        let now = Timestamp::now().millis();
        for rule in &self.erasure.retention {
            let kept_until = activity
                .iter()
                .filter(|(rt, _)| rule.resource_types.iter().any(|t| t == rt))
                .map(|(_, last)| last.millis().saturating_add(i64::from(rule.years).saturating_mul(YEAR_MS)))
                .max();
            if let Some(until) = kept_until.filter(|until| *until > now) {
                return Err(EngineError::Retained(format!(
                    "the retention rule `{}` keeps the records of Patient/{id} for {} years after their last \
                     change, until {}: they cannot be erased before",
                    rule.category,
                    rule.years,
                    Timestamp::from_millis(until).to_fhir()
                )));
            }
        }
        Ok(())
    }
}

/// The audit record of a permitted operation on a patient's record: `(status, detail)`.
fn record(
    ctx: &RequestContext,
    principal: &Principal,
    action: AuditAction,
    id: &ResourceId,
    (status, detail): (u16, &str),
    permit: &Permit,
) -> AuditRecord {
    AuditRecord::new(&ctx.meta, Some(&ctx.tenant), Agent::of(principal), action)
        .target(&patient_target(id))
        .outcome(status, Some(detail.to_owned()))
        .policy(Some(permit.rule()))
}

/// The days of `erasure.delay_days` as a duration.
pub fn delay_of_days(days: u32) -> Duration {
    Duration::from_millis(u64::from(days).saturating_mul(DAY_MS.unsigned_abs()))
}

fn patient_target(id: &ResourceId) -> Target {
    Target {
        resource_type: Some(ResourceType::PATIENT),
        resource_id: Some(id.clone()),
        version: None,
        compartment: Some(Compartment::Patient(id.clone()).key_ref()),
    }
}

/// The server itself, executing an erasure that fell due.
fn server_agent() -> Agent {
    Agent { subject: Some("fhirvault".into()), role: Some("system".into()), ..Agent::default() }
}

fn erased(id: &ResourceId, at: Option<Timestamp>) -> EngineError {
    EngineError::Erased { compartment: Compartment::Patient(id.clone()).key_ref(), at }
}

fn held(id: &ResourceId, hold: &LegalHold) -> EngineError {
    EngineError::Retained(format!(
        "a legal hold is set on Patient/{id} (since {}): its data cannot be erased until the hold is cleared",
        hold.set_at.to_fhir()
    ))
}
