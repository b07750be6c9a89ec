"""/v1/models: the model presets, the active one, and whether each one's weights are here."""

from fastapi import APIRouter

from api.deps import CurrentKey, SettingsDep
from api.schemas import ModelCatalog, PresetPublic
from core.preset_files import is_available
from core.presets import PRESETS

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=ModelCatalog)
def list_models(key: CurrentKey, settings: SettingsDep) -> ModelCatalog:
    """Every preset with its stages (request keys, defaults), captioner and embedder; which one is active."""
    models_dir = settings.resolved_models_dir
    return ModelCatalog(
        active=settings.model_preset,
        presets=[
            PresetPublic.from_preset(
                preset, active=name == settings.model_preset, available=is_available(preset, models_dir)
            )
            for name, preset in PRESETS.items()
        ],
    )
