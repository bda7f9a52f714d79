"""Train the toy model on CPU: the VAE first, then the text encoder and UNet; resumable; exports a diffusers folder.

    python -m magicremover.experiments.train_toy                      # full run (work_dir=toy_training, out_dir=models/toy)
    python -m magicremover.experiments.train_toy vae.steps=50 unet.steps=50 pool_size=256   # a smoke run

Rerunning the same command resumes from the last checkpoint in ``work_dir``. Sample grids from held-out captions
are written to ``work_dir/samples`` every ``sample_every`` steps.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from magicremover.attention import CrossAttentionStore, controlled_attention
from magicremover.config import CONFIG_DIR
from magicremover.errors import ConfigError
from magicremover.experiments._cli import check_argv, run_entry_point
from magicremover.images import to_pil
from magicremover.models import SDComponents, build_ddim_scheduler
from magicremover.toy.model import ScenePool, toy_modules
from magicremover.toy.scenes import RADIUS, radius_range
from magicremover.toy.tokenizer import build_toy_tokenizer

log = logging.getLogger("train_toy")
HELD_OUT_SEED = 10_000_000  # scenes from this seed on are never trained on


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def _save(state: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train_vae(cfg: DictConfig, vae, pool: ScenePool, work: Path) -> None:
    """L1 + MSE reconstruction and a small KL term; random crops first (4× cheaper), full scenes at the end."""
    path = work / "vae.pt"
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    step = 0
    if path.is_file():
        state = torch.load(path)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    gen = torch.Generator().manual_seed(1234 + step)
    bar = tqdm(range(step, cfg.steps), desc="vae", initial=step, total=cfg.steps, disable=None)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _cosine(step, cfg.steps, cfg.warmup)
        batch = pool.images[torch.randint(len(pool.images), (cfg.batch_size,), generator=gen)]
        if step < (1 - cfg.full_fraction) * cfg.steps:
            y, x = torch.randint(0, 64 - cfg.crop + 1, (2,), generator=gen).tolist()
            batch = batch[..., y : y + cfg.crop, x : x + cfg.crop]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = (
            F.l1_loss(recon, batch) + cfg.mse_weight * F.mse_loss(recon, batch) + cfg.kl_weight * posterior.kl().mean()
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            _save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1}, path)


@torch.no_grad()
def encode_pool(vae, pool: ScenePool, batch_size: int = 256) -> tuple[torch.Tensor, float]:
    """Posterior means of every scene, and the scaling factor 1/std that gives them unit variance (like SD)."""
    means = torch.cat(
        [vae.encode(pool.images[i : i + batch_size]).latent_dist.mean for i in range(0, len(pool.images), batch_size)]
    )
    return means, 1.0 / means.std().item()


def train_unet(cfg: DictConfig, unet, text_encoder, tokenizer, latents, pool: ScenePool, work: Path, sampler) -> None:
    """ε-prediction on SD's schedule with Min-SNR weighting, caption dropout for CFG, extra weight on object pixels,
    and an auxiliary loss tying each object word's cross-attention to that object's mask. Checkpoints hold the live and
    the EMA weights."""
    path = work / "unet.pt"
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=1e-4)
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    step = 0
    if path.is_file():
        state = torch.load(path)
        for module, key in ((unet, "unet"), (text_encoder, "text"), (ema_unet, "ema_unet"), (ema_text, "ema_text")):
            module.load_state_dict(state[key])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    alphas = build_ddim_scheduler().alphas_cumprod
    ids_all = tokenizer(
        pool.captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    gen = torch.Generator().manual_seed(4321 + step)
    store = CrossAttentionStore(keep_graph=True)
    bar = tqdm(range(step, cfg.steps), desc="unet", initial=step, total=cfg.steps, disable=None)
    with controlled_attention(unet, store):
        for step in bar:
            for group in opt.param_groups:
                group["lr"] = cfg.lr * _cosine(step, cfg.steps, cfg.warmup)
            idx = torch.randint(len(latents), (cfg.batch_size,), generator=gen)
            z0, token_masks = latents[idx], pool.token_masks[idx].float()
            keep = torch.rand(cfg.batch_size, generator=gen) >= cfg.caption_dropout
            ids = torch.where(keep[:, None], ids_all[idx], empty)
            t = torch.randint(0, 1000, (cfg.batch_size,), generator=gen)
            a = alphas[t].view(-1, 1, 1, 1)
            noise = torch.randn(z0.shape, generator=gen)
            store.reset()
            eps = unet(a.sqrt() * z0 + (1 - a).sqrt() * noise, t, text_encoder(ids)[0]).sample
            snr = a.flatten() / (1 - a.flatten())
            weight = torch.clamp(snr, max=cfg.min_snr_gamma) / snr
            objects = token_masks.amax(dim=1, keepdim=True)  # (B, 1, 16, 16) union of object masks
            pixel_weight = 1 + (cfg.object_loss_weight - 1) * objects
            loss_eps = ((eps - noise) ** 2 * pixel_weight).mean(dim=(1, 2, 3)).mul(weight).mean()
            loss_attn = attention_loss(store, token_masks * keep[:, None, None, None], cfg.attention_target)
            loss = loss_eps + cfg.attention_loss_weight * loss_attn
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            with torch.no_grad():
                for ema, live in ((ema_unet, unet), (ema_text, text_encoder)):
                    for p_ema, p in zip(ema.parameters(), live.parameters()):
                        p_ema.lerp_(p, 1 - cfg.ema_decay)
            bar.set_postfix(eps=f"{loss_eps.item():.4f}", attn=f"{loss_attn.item():.4f}")
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                _save(
                    {
                        "unet": unet.state_dict(),
                        "text": text_encoder.state_dict(),
                        "ema_unet": ema_unet.state_dict(),
                        "ema_text": ema_text.state_dict(),
                        "opt": opt.state_dict(),
                        "step": step + 1,
                    },
                    path,
                )
            if (step + 1) % cfg.sample_every == 0:
                sampler({"live": (unet, text_encoder), "ema": (ema_unet, ema_text)}, step + 1)


def attention_loss(store: CrossAttentionStore, token_masks: torch.Tensor, target: float) -> torch.Tensor:
    """Mean over layers of ‖Ā_k − target·m_k‖² over object tokens k, Ā = head-averaged cross-attention.

    Args:
        token_masks: ``(B, L, 16, 16)``; non-zero only for tokens naming an object (and captions kept).
    """
    named = token_masks.flatten(2).amax(dim=2) > 0  # (B, L) tokens that name an object
    if not named.any():
        return torch.zeros(())
    losses = []
    for name, probs in store.maps.items():
        h, w = store.shapes[name]
        mean = probs.mean(dim=1).transpose(1, 2)  # (B, L, h*w)
        goal = F.adaptive_avg_pool2d(token_masks, (h, w)).flatten(2) * target
        losses.append(((mean - goal) ** 2).mean(dim=2)[named].mean())
    return torch.stack(losses).mean()


def export(out_dir: Path, unet, vae, text_encoder, tokenizer, scaling_factor: float) -> SDComponents:
    """Write the diffusers folder (float16 weights) that ``model=toy`` loads."""
    vae.register_to_config(scaling_factor=scaling_factor)
    components = SDComponents(unet, vae, text_encoder, tokenizer, build_ddim_scheduler(), identity="toy")
    components.save_pretrained(out_dir, dtype=torch.float16)
    return components


def run(cfg: DictConfig) -> None:
    radius = radius_range(cfg.scene_radius or RADIUS)  # bad scene settings fail before anything is written
    if not isinstance(cfg.scene_distinct_colours, bool):
        raise ConfigError(
            f"scene_distinct_colours={cfg.scene_distinct_colours!r}: give true (the domain) or false "
            "(two objects may share a colour, as the committed model's training scenes)"
        )
    torch.set_num_threads(cfg.threads)
    work, out = Path(cfg.work_dir), Path(cfg.out_dir)
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    tokenizer = build_toy_tokenizer()
    unet, vae, text_encoder = toy_modules(tokenizer, cfg.seed)
    colours = "distinct" if cfg.scene_distinct_colours else "any"
    pool_path = work / f"pool_{cfg.pool_size}_r{radius[0]:g}-{radius[1]:g}_colours-{colours}.pt"
    if pool_path.is_file():
        pool = ScenePool.load(pool_path)
    else:
        log.info("rendering %d training scenes (object radii %s px, colours %s)", cfg.pool_size, radius, colours)
        seeds = range(cfg.seed, cfg.seed + cfg.pool_size)
        pool = ScenePool.render(seeds, tokenizer, radius, cfg.scene_distinct_colours)
        pool.save(pool_path)
    timings = {}
    start = time.perf_counter()
    train_vae(cfg.vae, vae, pool, work)
    timings["vae_seconds"] = time.perf_counter() - start
    vae.eval().requires_grad_(False)
    latents, scaling = encode_pool(vae, pool)
    latents = latents * scaling
    held_out = ScenePool.render(range(HELD_OUT_SEED, HELD_OUT_SEED + 8), tokenizer).captions

    def sampler(weights: dict, step: int) -> None:
        """A grid of samples from held-out captions with the weights that will be exported."""
        from magicremover.diffusion import decode_latents

        fresh_unet, _, fresh_text = toy_modules(tokenizer, cfg.seed)  # fresh modules: no training processors attached
        for fresh, trained in zip((fresh_unet, fresh_text), weights[cfg.export_weights]):
            fresh.load_state_dict(trained.state_dict())
        components = SDComponents(fresh_unet, vae, fresh_text, tokenizer, build_ddim_scheduler(), identity="toy")
        images = sample(components, held_out, steps=20, seed=step)
        grid = torch.cat(list(decode_latents(components, images)), dim=-1)
        (work / "samples").mkdir(exist_ok=True)
        to_pil(grid).save(work / "samples" / f"step_{step:06d}.png")
        components.calls.close()

    start = time.perf_counter()
    train_unet(cfg.unet, unet, text_encoder, tokenizer, latents, pool, work, sampler)
    timings["unet_seconds"] = time.perf_counter() - start
    state = torch.load(work / "unet.pt")
    prefix = "ema_" if cfg.export_weights == "ema" else ""
    unet.load_state_dict(state[f"{prefix}unet"])
    text_encoder.load_state_dict(state[f"{prefix}text"])
    export(out, unet, vae, text_encoder, tokenizer, scaling)
    (out / "training.json").write_text(json.dumps({"config": OmegaConf.to_container(cfg), **timings}, indent=2))
    log.info("exported the toy model to %s", out)


@torch.no_grad()
def sample(
    components: SDComponents, captions: list[str], steps: int = 20, guidance: float = 7.5, seed: int = 0
) -> torch.Tensor:
    """Text-to-image samples (latents ``(B, 4, 16, 16)``) with CFG and DDIM."""
    from magicremover.diffusion import alpha_bar, cfg_eps, ddim_step, encode_text, step_size

    components.scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    out = []
    for caption in captions:
        cond, uncond = encode_text(components, [caption]), encode_text(components, [""])
        z = torch.randn(1, 4, components.unet.config.sample_size, components.unet.config.sample_size, generator=g)
        for t in components.scheduler.timesteps.tolist():
            eps = cfg_eps(components, z, t, uncond, cond, guidance)
            z = ddim_step(z, eps, alpha_bar(components, t), alpha_bar(components, t - step_size(components)))
        out.append(z)
    return torch.cat(out)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train_toy")
def main(cfg: DictConfig) -> None:
    run_entry_point(lambda cfg, _out_dir: run(cfg), cfg)


def cli() -> None:
    """``magicremover-train-toy``, the same command as ``python -m magicremover.experiments.train_toy``."""
    check_argv()
    main()


if __name__ == "__main__":
    cli()
