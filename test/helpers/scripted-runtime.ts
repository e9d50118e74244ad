import { setTimeout as delay } from 'node:timers/promises';
import type { InstanceRuntime, Progress } from '../../src/broker/contracts.js';
import type { ServiceDefinition } from '../../src/catalog/definition.js';
import type { ContainerSummary } from '../../src/docker/types.js';
import type { BindingRecord, InstanceRecord } from '../../src/store/records.js';

type Step = 'start' | 'recreate' | 'configure' | 'bind' | 'unbind' | 'destroy';

/**
 * A runtime whose steps each test scripts: how long a step takes and whether it fails. It keeps a note of what
 * "runs", so tests can see what the lifecycle created and removed. The Docker runtime is tested against the engine.
 */
export class ScriptedRuntime implements InstanceRuntime {
  readonly running = new Set<string>();
  readonly calls: Array<{ step: Step; instanceId: string }> = [];
  delays: Partial<Record<Step, number>> = {};
  failures: Partial<Record<Step, string>> = {};
  /** Steps that run their whole delay even when the operation is cancelled, as an image build does. */
  readonly unabortable = new Set<Step>();

  private async step(step: Step, instanceId: string, signal?: AbortSignal): Promise<void> {
    this.calls.push({ step, instanceId });
    if (this.delays[step]) await delay(this.delays[step], undefined, { signal: this.unabortable.has(step) ? undefined : signal });
    if (this.failures[step]) throw new Error(this.failures[step]);
  }

  async start(_definition: ServiceDefinition, instance: InstanceRecord, signal: AbortSignal, progress: Progress) {
    await progress('Starting.');
    await this.step('start', instance.id, signal);
    this.running.add(instance.id);
  }
  async recreate(_definition: ServiceDefinition, instance: InstanceRecord, signal: AbortSignal) {
    await this.step('recreate', instance.id, signal);
  }
  async destroy(instance: InstanceRecord) {
    await this.step('destroy', instance.id);
    this.running.delete(instance.id);
  }
  async inspect(instance: InstanceRecord): Promise<ContainerSummary | undefined> {
    if (!this.running.has(instance.id)) return undefined;
    return {
      id: instance.id,
      name: instance.containerName,
      image: 'fake',
      running: true,
      status: 'running',
      labels: {},
      env: [],
      restartCount: 0,
      createdAt: '',
    };
  }
  async applyLimits() {}
  async configure(_definition: ServiceDefinition, instance: InstanceRecord, signal: AbortSignal) {
    await this.step('configure', instance.id, signal);
  }
  async bind(_definition: ServiceDefinition, instance: InstanceRecord, _binding: BindingRecord, signal: AbortSignal) {
    await this.step('bind', instance.id, signal);
    return {};
  }
  async unbind(_definition: ServiceDefinition, instance: InstanceRecord, _binding: BindingRecord, signal: AbortSignal) {
    await this.step('unbind', instance.id, signal);
  }
}
