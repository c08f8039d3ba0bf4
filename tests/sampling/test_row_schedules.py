"""One schedule per row: jobs with different step counts sampled as one batch give what each
gives alone, for every sampler that takes a schedule table; the others refuse a table."""
import pytest
import torch

from farm.errors import InvalidInputError
from farm.sampling.denoiser import CFGDenoiser, Conditioning
from farm.sampling.model_sampling import DiscreteSchedule
from farm.sampling.noise import NoiseSampler
from farm.sampling.row_schedules import stack_schedules
from farm.sampling.sample import sample
from farm.sampling.samplers import ROW_SCHEDULE_SAMPLERS, SAMPLER_NOISE, SAMPLERS, NoiseKind
from farm.sampling.schedules import compute_sigmas

SD = DiscreteSchedule.sd()
MU, S = 0.5, 0.8


def gaussian_denoiser(x, sigma):
    """The exact denoiser of data N(MU, S^2): every row on its own sigma."""
    sig2 = sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2
    return (S**2 * x + sig2 * MU) / (S**2 + sig2)


def test_equal_schedules_stay_one_schedule():
    sigmas = compute_sigmas(SD, "normal", 5)
    assert stack_schedules([sigmas, sigmas.clone()], 2) is sigmas


def test_a_table_holds_each_jobs_schedule_over_its_rows_then_nan():
    short, long = compute_sigmas(SD, "normal", 2), compute_sigmas(SD, "karras", 4)
    table = stack_schedules([short, long], 2)
    assert table.shape == (5, 4)
    torch.testing.assert_close(table[:3, 0], short)
    torch.testing.assert_close(table[:3, 1], short)
    assert table[3:, :2].isnan().all()
    torch.testing.assert_close(table[:, 3], long)


@pytest.mark.parametrize("name", sorted(ROW_SCHEDULE_SAMPLERS))
def test_jobs_of_different_steps_in_one_batch_equal_each_alone(name):
    steps, seeds, rows = [3, 6, 4], [7, 8, 9], 2
    schedules = [compute_sigmas(SD, "normal", n, sampler_name=name) for n in steps]
    table = stack_schedules(schedules, rows)
    x = torch.randn(rows * len(steps), 2, 4, 4, generator=torch.Generator().manual_seed(1)) * float(schedules[0][0])
    noise = (lambda like, s: NoiseSampler(like, s)) if SAMPLER_NOISE[name] is NoiseKind.GAUSSIAN else (lambda *_: None)
    seen = []
    batched = SAMPLERS[name](gaussian_denoiser, x, table, noise_sampler=noise(x, seeds), callback=seen.append)
    assert len(seen) == max(steps) and not batched.isnan().any()
    for j, (sigmas, seed) in enumerate(zip(schedules, seeds)):
        block = x[rows * j:rows * (j + 1)]
        alone = SAMPLERS[name](gaussian_denoiser, block, sigmas, noise_sampler=noise(block, [seed]))
        torch.testing.assert_close(batched[rows * j:rows * (j + 1)], alone, rtol=1e-6, atol=1e-6)


def plain(rows: int) -> Conditioning:
    return Conditioning(torch.ones(rows, 77, 8))


def eps_of_x(x, timestep, cond):
    return 0.1 * x + 0.01 * cond.embeds.mean()


def test_sample_starts_each_row_from_its_own_first_sigma():
    # denoise < 1: each job's schedule starts lower, at a sigma that depends on its steps
    schedules = [compute_sigmas(SD, "normal", n, denoise=0.6) for n in (3, 5)]
    assert float(schedules[0][0]) != float(schedules[1][0])
    latent = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    denoiser = CFGDenoiser(eps_of_x, SD, plain(1), plain(1), 5.0)
    batched = sample(denoiser, latent, noise, stack_schedules(schedules, 1), "euler")
    for j, sigmas in enumerate(schedules):
        alone = sample(denoiser, latent[j:j + 1], noise[j:j + 1], sigmas, "euler")
        torch.testing.assert_close(batched[j:j + 1], alone, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(set(SAMPLERS) - ROW_SCHEDULE_SAMPLERS))
def test_samplers_of_one_schedule_refuse_a_table(name):
    table = stack_schedules([compute_sigmas(SD, "normal", n) for n in (2, 3)], 1)
    latent = torch.zeros(2, 4, 8, 8)
    with pytest.raises(InvalidInputError, match="different steps"):
        sample(CFGDenoiser(eps_of_x, SD, plain(1), plain(1), 5.0), latent, latent, table, name, seeds=[1, 2])


def test_rows_whose_schedule_has_ended_leave_the_model_call():
    rows_seen = []

    def eps(x, timestep, cond):
        rows_seen.append(x.shape[0])
        assert not timestep.isnan().any()
        return 0.1 * x + 0.01 * cond.embeds.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)

    schedules = [compute_sigmas(SD, "karras", n) for n in (2, 4, 3)]
    latent = torch.zeros(3, 4, 8, 8)
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    prompts = Conditioning(torch.arange(3.0).reshape(3, 1, 1).expand(3, 77, 8))  # a prompt per job
    denoiser = CFGDenoiser(eps, SD, prompts, plain(1), torch.tensor([5.0, 6.0, 7.0]))
    batched = sample(denoiser, latent, noise, stack_schedules(schedules, 1), "dpmpp_2m")
    assert rows_seen == [6, 6, 4, 2]  # CFG: two rows a job; the 2-step job leaves after step 2, then the 3-step one
    for j, sigmas in enumerate(schedules):
        rows_seen.clear()
        alone = CFGDenoiser(eps, SD, Conditioning(prompts.embeds[j:j + 1]), plain(1), [5.0, 6.0, 7.0][j])
        torch.testing.assert_close(batched[j:j + 1], sample(alone, latent[j:j + 1], noise[j:j + 1], sigmas, "dpmpp_2m"),
                                   rtol=1e-6, atol=1e-6)
