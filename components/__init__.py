"""KFP v2 components: thin adapters from the pipeline to the mammoflow library (import: mammoflow.components)."""
