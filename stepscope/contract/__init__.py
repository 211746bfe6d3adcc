"""What users build on: the shared vocabulary, the metric definitions, and the rules and dashboards made from them."""
