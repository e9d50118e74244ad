import { execFile } from 'node:child_process';
import path from 'node:path';
import type { DockerEngine } from '../docker/engine.js';
import type { Logger } from '../log.js';

/**
 * Builds images from Dockerfiles kept in the repository (no registry needed). The base image is a build
 * argument: debian:bookworm-slim where present or pullable, else one made with debootstrap by scripts/base-image.sh.
 */
export class ImageBuilder {
  private base?: Promise<string>;
  private readonly inFlight = new Map<string, Promise<void>>();

  constructor(
    private readonly engine: DockerEngine,
    private readonly scriptsDir: string,
    private readonly log: Logger,
    private readonly baseImageOverride?: string,
  ) {}

  baseImage(): Promise<string> {
    this.base ??= this.baseImageOverride
      ? Promise.resolve(this.baseImageOverride)
      : new Promise<string>((resolve, reject) => {
          execFile('bash', [path.join(this.scriptsDir, 'base-image.sh')], { maxBuffer: 1 << 24 }, (error, stdout, stderr) => {
            if (error) {
              this.base = undefined;
              reject(new Error(`cannot prepare a Debian base image: ${stderr.trim().split('\n').slice(-3).join(' ') || error.message}`));
            } else resolve(stdout.trim());
          });
        });
    return this.base;
  }

  /** Builds `tag` from `contextDir` unless the engine has it; concurrent callers share one build. Returns true if it built. */
  async ensure(contextDir: string, tag: string, onLine: (line: string) => void = () => {}): Promise<boolean> {
    if (await this.engine.imageExists(tag)) return false;
    let build = this.inFlight.get(tag);
    if (!build) {
      build = this.build(contextDir, tag, onLine).finally(() => this.inFlight.delete(tag));
      this.inFlight.set(tag, build);
    }
    await build;
    return true;
  }

  private async build(contextDir: string, tag: string, onLine: (line: string) => void): Promise<void> {
    const baseImage = await this.baseImage();
    this.log.info({ tag, baseImage }, 'building image');
    const started = Date.now();
    await this.engine.buildImage(contextDir, tag, { BASE_IMAGE: baseImage }, { 'io.osb-broker.image': tag }, onLine);
    this.log.info({ tag, seconds: Math.round((Date.now() - started) / 1000) }, 'image built');
  }
}
